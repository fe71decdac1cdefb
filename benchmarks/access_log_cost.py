"""What the access log costs per request, in CPU instructions (callgrind), not seconds.

    PYTHONHASHSEED=0 setarch -R valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/access_log_cost.py off|default|FORMAT N

Runs N keep-alive hello requests through the real HTTP/1.1 connection class (httptools)
on an in-memory transport with the stdlib asyncio loop, in one process: no sockets, no
scheduling noise, so callgrind's instruction count is the same from run to run even on a
busy machine. Access lines go through asgictl's own handler and formatter into
/dev/null. ``off`` is ``--no-access-log``, ``default`` asgictl's default line, anything
else an ``--access-log-format``.

The cost per request is the slope between two N (the fixed start-up cost cancels):
``(I(N2) - I(N1)) / (N2 - N1)``. The cyclic GC is off during the requests (its full
collections would land at different points from one run to the next). To measure
another checkout with the same script, put its ``asgictl`` first on ``sys.path`` and
drop the editable install's finder from ``sys.meta_path`` (it wins over PYTHONPATH),
then ``runpy.run_path`` this file (``off`` and ``default`` only, on a checkout without
``--access-log-format``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from types import SimpleNamespace
from typing import Any

from asgictl.config import Config
from asgictl.logs import configure_logging
from asgictl.protocols.factory import connection_factory
from asgictl.protocols.state import ServerState

REQUEST = b"GET /path?q=1 HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench/1\r\n\r\n"


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += 1

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


def main() -> None:
    mode, count = sys.argv[1], int(sys.argv[2])
    options: dict[str, Any] = {"access_log": mode != "off"}
    if mode not in ("off", "default"):
        options["access_log_format"] = mode
    config = Config(hello, http="httptools", use_colors=False, **options)
    devnull = open(os.devnull, "w")  # lives as long as the process
    sys.stdout = devnull  # the access handler writes to stdout
    configure_logging(
        SimpleNamespace(log_config=None, log_level="info", access_log=config.access_log, use_colors=False)
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    state = ServerState(config, hello, loop)
    protocol = connection_factory(state)()
    transport = Transport()
    protocol.connection_made(transport)

    async def drive() -> None:
        for _ in range(count):
            before = transport.written
            protocol.data_received(REQUEST)
            while transport.written == before:
                await asyncio.sleep(0)

    # No cyclic GC while measuring: its full collections land at different points in
    # two runs and would blur a difference of a few hundred instructions per request.
    gc.disable()
    loop.run_until_complete(drive())
    gc.enable()
    sys.stdout = sys.__stdout__
    print(f"{mode}: {count} requests, {transport.written} writes")


if __name__ == "__main__":
    main()
