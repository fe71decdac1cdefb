"""CPU instructions per hello request, counted by callgrind: a figure noise cannot move.

    python3 benchmarks/callgrind_hello.py [--http h1c|httptools|h11|both|all] [--loop uvloop|asyncio]
                                          [--request hello|browser|post] [--protocol 1.1|2]
                                          [--engine h2|zttp]
                                          [--server asgictl|floor-canned|floor-asgi]

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

``--request browser`` sends the head of the ``hello-browser`` scenario instead: Host and
the ten fields of a browser's page request (``harness.scenarios.BROWSER_HEADERS``), where
``hello`` sends Host alone, as wrk does. ``--request post`` sends ``POST /`` with Host
and a 10 KiB body framed by Content-Length, in the same read (the app does not read it:
the connection still parses and queues it). With ``--protocol 2``, ``post`` sends the
same 10 KiB body in a DATA frame and the app is ``apps.echo`` (the ``h2-post10k``
scenario): the body is read, acknowledged with WINDOW_UPDATE and sent back.

``--http h1c`` needs a gunicorn_h1c built without ``-msse4.2`` first on ``PYTHONPATH``:
valgrind does not decode the SSE4.2 string instruction picohttpparser uses (the run dies
of SIGILL). That build scans with picohttpparser's scalar loop, so its count is an upper
bound of the real build's::

    pip download --no-binary :all: --no-deps gunicorn_h1c && tar xzf gunicorn_h1c-*.tar.gz
    sed -i 's/extra_compile_args.append("-msse4.2")/pass/' gunicorn_h1c-*/setup.py
    pip install --no-deps --target /tmp/h1c-scalar ./gunicorn_h1c-*/
    PYTHONPATH=/tmp/h1c-scalar python3 benchmarks/callgrind_hello.py --http all

``--server floor-canned`` or ``floor-asgi`` drives one of ``floor.py``'s reference
protocols through the same loop instead of asgictl's connection: the instructions of
uvloop and llhttp alone, and of the least an ASGI server does, for the same request.
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


def browser_request() -> bytes:
    """The request wrk sends in the hello-browser scenario: Host, then the ten fields."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from harness.scenarios import BROWSER_HEADERS

    fields = "".join(f"{name}: {value}\r\n" for name, value in BROWSER_HEADERS)
    return REQUEST[:-2] + f"{fields}\r\n".encode("latin-1")


BODY = b"x" * 10240
POST = b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Length: 10240\r\n\r\n" + BODY

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def http2_frames(count: int, post: bool = False) -> list[bytes]:
    """The client's bytes for ``count`` GET / streams (preface and SETTINGS first); with
    ``post``, ``POST /`` streams with a 10 KiB body in one DATA frame, each read also
    carrying a connection WINDOW_UPDATE that gives back the 10 KiB echoed to the stream
    before (as a client reading the answers does)."""
    import hpack
    from hyperframe.frame import SettingsFrame

    encoder = hpack.Encoder()
    headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "127.0.0.1:8000")]
    if post:
        headers[0] = (":method", "POST")
        headers.append(("content-length", str(len(BODY))))
    first = encoder.encode(headers)
    block = encoder.encode(headers)
    if not post:
        # The connection's window opened to 2^31-1 at once, as h2load does: 13-byte
        # bodies would close the protocol's first 65,535 bytes after 5,041 streams.
        opening = _frame(8, b"\x00", 0, (2**31 - 1 - 65535).to_bytes(4, "big"))
        flags = b"\x05"  # END_STREAM | END_HEADERS
        return [PREFACE + SettingsFrame(0).serialize() + opening + _frame(1, flags, 1, first)] + [
            _frame(1, flags, 1 + 2 * i, block) for i in range(1, count)
        ]
    update = _frame(8, b"\x00", 0, len(BODY).to_bytes(4, "big"))  # WINDOW_UPDATE, stream 0
    reads = []
    for i in range(count):
        stream_id = 1 + 2 * i
        request = _frame(1, b"\x04", stream_id, block if i else first)  # END_HEADERS
        request += _frame(0, b"\x01", stream_id, BODY)  # DATA, END_STREAM
        reads.append(PREFACE + SettingsFrame(0).serialize() + request if i == 0 else update + request)
    return reads


def _frame(kind: int, flags: bytes, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind]) + flags + stream_id.to_bytes(4, "big") + payload


def serve_requests(
    http: str, loop_name: str, count: int, protocol: str, engine: str, request: str, server: str
) -> None:
    """The measured body: ``count`` requests on one keep-alive connection."""
    import asyncio

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from apps import echo, hello

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
            self.size = 0
            self.protocol: asyncio.BaseProtocol | None = None

        def get_extra_info(self, name: str, default: object = None) -> object:
            return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

        def write(self, data: bytes) -> None:
            self.written += 1
            self.size += len(data)

        def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
            self.protocol = protocol

        def is_closing(self) -> bool:
            return False

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    app = echo if protocol == "2" and request == "post" else hello
    config = Config(app, http=http, access_log=False, http2_engine=engine)
    state = ServerState(config, app, loop)
    transport = Transport()
    if server == "asgictl":
        transport.protocol = connection_factory(state)()
    else:
        import floor

        transport.protocol = floor.Canned() if server == "floor-canned" else floor.MinimalASGI()
    reads = (
        http2_frames(count, post=request == "post")
        if protocol == "2"
        else [browser_request() if request == "browser" else POST if request == "post" else REQUEST] * count
    )

    async def connect() -> None:  # floor.MinimalASGI looks for the running loop there
        transport.protocol.connection_made(transport)

    loop.run_until_complete(connect())

    async def drive() -> None:
        for data in reads:
            transport.protocol.data_received(data)  # HTTP/2 once the preface handed it over
            # HTTP/2: also until the apps' tasks are reaped (``running``), as the loop's
            # turns between two reads do; on 3.12+ an eager task is done inside
            # data_received, and streams would pile up to the concurrency limit.
            while state.active_requests or getattr(transport.protocol, "running", 0):
                await asyncio.sleep(0)
            if server != "asgictl":
                await asyncio.sleep(0)  # the floors keep no count: one loop turn per request
        await asyncio.sleep(0)  # the HTTP/2 frames of the last stream are flushed

    loop.run_until_complete(drive())
    if server != "asgictl":
        assert transport.written == count, (transport.written, count)
    elif protocol == "2":
        assert state.total_requests == count and transport.written >= count, (transport.written, count)
        if request == "post":  # every body came back
            assert transport.size > count * len(BODY), (transport.size, count)
    else:
        assert transport.written == count, (transport.written, count)
    loop.close()


def instructions(
    http: str, loop_name: str, count: int, protocol: str, engine: str, request: str, server: str
) -> int:
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
            request,
            server,
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
    if len(sys.argv) == 9 and sys.argv[1] == "--child":
        http, loop_name, count, protocol, engine, request, server = sys.argv[2:]
        serve_requests(http, loop_name, int(count), protocol, engine, request, server)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", choices=("h1c", "httptools", "h11", "both", "all"), default="both")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--base", type=int, default=500, help="requests of the first run")
    parser.add_argument("--requests", type=int, default=5000, help="extra requests of the second run")
    parser.add_argument("--protocol", choices=("1.1", "2"), default="1.1", help="2: HTTP/2, prior knowledge")
    parser.add_argument("--engine", choices=("h2", "zttp"), default="h2", help="the HTTP/2 framing engine")
    parser.add_argument(
        "--request", choices=("hello", "browser", "post"), default="hello", help="the request's fields"
    )
    parser.add_argument(
        "--server", choices=("asgictl", "floor-canned", "floor-asgi"), default="asgictl", help="who answers"
    )
    args = parser.parse_args()
    if args.server != "asgictl" and args.protocol != "1.1":
        parser.error("the floors speak HTTP/1.1 only")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    parsers = {"both": ("httptools", "h11"), "all": ("h1c", "httptools", "h11")}.get(args.http, (args.http,))
    if args.server != "asgictl":
        parsers = (args.server,)  # the floors parse with httptools
    what = (
        f"{args.request} request"
        if args.protocol == "1.1"
        else f"HTTP/2 {'POST 10 KiB echoed' if args.request == 'post' else 'GET /'}, engine {args.engine}"
    )
    print(f"python {sys.version.split()[0]}, loop {args.loop}, PYTHONHASHSEED=0, {what}")
    rest = (args.protocol, args.engine, args.request, args.server)
    for http in parsers:
        http_class = "httptools" if http.startswith("floor") else http
        low = instructions(http_class, args.loop, args.base, *rest)
        high = instructions(http_class, args.loop, args.base + args.requests, *rest)
        per = (high - low) / args.requests
        print(f"{http:12s} {per:10.0f} instructions per request")


if __name__ == "__main__":
    main()
