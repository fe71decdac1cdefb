"""The benchmark scenarios: which app, which request, how many connections, which servers.

A scenario belongs to a server group: ``main`` scenarios run asgictl and its peers in
their fast configurations, ``h11`` scenarios compare the pure-Python h11 parsers
(asgictl ``--http h11`` vs uvicorn ``--http h11``). Ratios are against the group's
baseline server.

A "browser" scenario sends, besides wrk's Host, the ten header fields a browser puts on
a page request (``BROWSER_HEADERS``, wrk ``-H``): parsing and handing over request
fields is part of every real request's cost.

Before measuring, each server gets one request through ``http.client`` and its answer is
checked (``Scenario.verify``), so a server that answers wrongly is reported as failed
instead of being benchmarked.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass

import apps

POST_SIZE = 10 * 1024
GROUP_BASELINES = {"main": "uvicorn", "h11": "uvicorn-h11"}

#: What a desktop Chrome sends with a same-origin navigation (wrk adds Host), 10 fields.
BROWSER_HEADERS: tuple[tuple[str, str], ...] = (
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
    ),
    (
        "Accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
        "application/signed-exchange;v=b3;q=0.7",
    ),
    ("Accept-Language", "en-US,en;q=0.9,de;q=0.8"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    (
        "Cookie",
        "sessionid=8f2b1c9e4d7a4e0f9b3c2a1d5e6f7a8b; csrftoken=Zq3xW9pL2mN8vB4cR7tY1uI6oP0aS5dF; theme=dark",
    ),
    ("Referer", "http://127.0.0.1/items/?page=2"),
    ("Sec-Fetch-Dest", "document"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-Site", "same-origin"),
    ("Upgrade-Insecure-Requests", "1"),
)


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario (see the module docstring)."""

    name: str
    description: str
    app: str
    path: str = "/"
    kind: str = "get"  # "get", "post" (10 KiB body) or "pipeline" (16 requests per write)
    connections: int = 64
    group: str = "main"
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request (wrk -H)

    @property
    def baseline(self) -> str:
        return GROUP_BASELINES[self.group]

    def verify(self, host: str, port: int, timeout_s: float) -> str | None:
        """Send one request and check the answer; returns an error message or None."""
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            headers = dict(self.headers)
            if self.kind == "post":
                sent = b"x" * POST_SIZE
                conn.request("POST", self.path, body=sent, headers=headers)
            else:
                sent = b""
                conn.request("GET", self.path, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            return f"verification request failed: {exc!r}"
        finally:
            conn.close()
        if response.status != 200:
            return f"verification request got status {response.status}: {body[:200]!r}"
        return self.check_body(body, sent)

    def check_body(self, body: bytes, sent: bytes) -> str | None:
        """Compare a response body with what this scenario's app must return."""
        expected = EXPECTED_BODIES.get(self.app)
        if self.kind == "post":
            expected = sent
        if expected is not None and body != expected:
            return f"unexpected body ({len(body)} bytes): {body[:80]!r}..."
        if self.app == "fastapi_app:app" and json.loads(body).get("item_id") != 42:
            return f"unexpected FastAPI answer: {body[:200]!r}"
        return None


EXPECTED_BODIES = {
    "apps:hello": apps.HELLO_BODY,
    "apps:get10k": apps.GET10K_BODY,
    "apps:stream": apps.STREAM_CHUNK * apps.STREAM_CHUNKS,
}

SCENARIOS = [
    Scenario("hello", "GET 13-byte 'Hello, world!' text/plain, 64 connections", "apps:hello"),
    Scenario(
        "hello-browser",
        "GET 13-byte hello with a browser's 10 request header fields",
        "apps:hello",
        headers=BROWSER_HEADERS,
    ),
    Scenario("hello-c1024", "GET 13-byte hello, 1024 connections", "apps:hello", connections=1024),
    Scenario(
        "pipeline16",
        "GET 13-byte hello, 16 requests pipelined per write (no latency: wrk can't time it)",
        "apps:hello",
        kind="pipeline",
    ),
    Scenario("get10k", "GET a 10 KiB body", "apps:get10k"),
    Scenario("post10k", "POST 10 KiB, echoed back", "apps:echo", kind="post"),
    Scenario(
        "fastapi-json",
        "FastAPI JSON endpoint (path + query params, pydantic response model)",
        "fastapi_app:app",
        path="/items/42?q=widget",
    ),
    Scenario(
        "fastapi-browser",
        "FastAPI JSON endpoint with a browser's 10 request header fields",
        "fastapi_app:app",
        path="/items/42?q=widget",
        headers=BROWSER_HEADERS,
    ),
    Scenario(
        "stream64",
        f"streaming response, {apps.STREAM_CHUNKS} chunks of {apps.STREAM_CHUNK_SIZE} bytes",
        "apps:stream",
    ),
    Scenario("h11-hello", "GET 13-byte hello, pure-Python h11 parser", "apps:hello", group="h11"),
    Scenario(
        "h11-post10k",
        "POST 10 KiB echoed, pure-Python h11 parser",
        "apps:echo",
        kind="post",
        group="h11",
    ),
]

SCENARIOS_BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
