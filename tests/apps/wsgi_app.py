"""A plain WSGI app (PEP 3333, no framework) for the end-to-end tests of the WSGI adapter.

- ``/``            13-byte hello with a Content-Length
- ``/pid``         the worker's PID
- ``/echo``        the request body back (read to EOF: chunked uploads too)
- ``/block?flag=PATH``  creates PATH.started, waits (at most 20 s) until the file PATH
  exists, then answers
- ``/file?path=PATH``   the file through ``wsgi.file_wrapper``, with a Content-Length
- ``/thread``      the name of the thread the app runs in
- ``/slow-stream`` a streamed response (no Content-Length) whose second part follows
  5 ms after the first: the head leaves before the response is complete
"""

import os
import threading
import time
from urllib.parse import parse_qs


def _query(environ, name):
    return parse_qs(environ.get("QUERY_STRING", "")).get(name, [""])[0]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/echo":
        body = environ["wsgi.input"].read()
    elif path == "/block":
        flag = _query(environ, "flag")
        with open(flag + ".started", "w"):
            pass
        deadline = time.monotonic() + 20
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.01)
        body = b"released"
    elif path == "/file":
        name = _query(environ, "path")
        size = os.path.getsize(name)
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](open(name, "rb"), 32768)  # the server closes it
    elif path == "/slow-stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _slow_stream()
    elif path == "/thread":
        body = threading.current_thread().name.encode()
    else:
        body = b"Hello, world!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _slow_stream():
    yield b"first part, "
    time.sleep(0.005)
    yield b"second part"
