"""End to end: /healthz and /readyz on the --metrics-bind listener of a real master.

The workers of ``gated:app`` finish their lifespan startup only when the test opens their
gate (a file), so the test steps the master through "no worker ready", "1 of 2 ready",
"2 of 2 ready" and "graceful stop in progress" and reads both probes at each step.
"""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path

import httpx
import support
from support import run_asgictl, wait_until

TIMEOUT = 10.0


def probe(base: str, path: str) -> tuple[int, str]:
    r = httpx.get(base + path, timeout=TIMEOUT)
    return r.status_code, r.text.strip()


def probes(base: str) -> tuple[tuple[int, str], tuple[int, str]]:
    return probe(base, "/healthz"), probe(base, "/readyz")


def test_health_and_readiness_follow_the_workers(tmp_path: Path) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    args = ["start", "gated:app", "--workers", "2", "--port", "0", "--no-access-log"]
    args += ["--metrics-bind", "127.0.0.1:0", "--timeout-graceful-shutdown", "20"]
    with run_asgictl(args, env=support.test_env(GATE_DIR=str(gates)), ready=False) as server:
        base = server.wait_for_line(r"Metrics: (http://\S+)/metrics").group(1)
        # Booting: the master answers, no worker serves yet.
        wait_until(lambda: (gates / "claim-1").exists(), what="worker 1 in its startup")
        assert probes(base) == (
            (503, "no worker ready: 0/2 workers ready"),
            (503, "not ready: 0/2 workers ready"),
        )
        assert httpx.head(base + "/readyz", timeout=TIMEOUT).status_code == 503
        (gates / "open-1").touch()
        wait_until(lambda: probe(base, "/healthz")[0] == 200, what="one worker ready")
        assert probes(base) == ((200, "ok: 1/2 workers ready"), (503, "not ready: 1/2 workers ready"))
        (gates / "open-2").touch()
        url = server.wait_ready()
        assert probes(base) == ((200, "ok: 2/2 workers ready"), (200, "ready: 2/2 workers ready"))
        assert httpx.head(base + "/healthz", timeout=TIMEOUT).status_code == 200

        # A graceful stop with a request in flight: not ready at once, while still serving it.
        answers: list[int] = []
        slow = threading.Thread(
            target=lambda: answers.append(httpx.get(url + "/slow?3", timeout=30).status_code)
        )
        slow.start()
        try:
            server.wait_for_line(r"slow started")
            server.signal(signal.SIGTERM)
            status, text = wait_until(
                lambda: (r := probe(base, "/readyz"))[1].startswith("stopping") and r, what="readyz stopping"
            )
            assert status == 503 and re.fullmatch(r"stopping: [0-2]/2 workers ready", text)
        finally:
            slow.join(30)
        assert answers == [200]
        assert server.wait_exit() == 0


def test_unknown_path_names_the_endpoints(tmp_path: Path) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    (gates / "open-1").touch()
    args = ["start", "gated:app", "--port", "0", "--metrics-bind", "127.0.0.1:0"]
    with run_asgictl(args, env=support.test_env(GATE_DIR=str(gates))) as server:
        base = re.search(r"Metrics: (http://\S+)/metrics", server.output).group(1)  # type: ignore[union-attr]
        r = httpx.get(base + "/nope", timeout=TIMEOUT)
        assert r.status_code == 404 and "/healthz" in r.text and "/readyz" in r.text
        assert probes(base) == ((200, "ok: 1/1 workers ready"), (200, "ready: 1/1 workers ready"))
        # The listener's answers are the protocols' own small responses: the status line
        # with its reason, the fields of a GET for a HEAD (without the body), Allow on 405.
        r = httpx.post(base + "/metrics", timeout=TIMEOUT)
        assert r.status_code == 405 and r.reason_phrase == "Method Not Allowed"
        assert r.headers["allow"] == "GET, HEAD" and r.headers["connection"] == "close"
        get = httpx.get(base + "/healthz", timeout=TIMEOUT)
        head = httpx.head(base + "/healthz", timeout=TIMEOUT)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
        assert get.headers["content-type"] == "text/plain; charset=utf-8"
        scrape = httpx.get(base + "/metrics", timeout=TIMEOUT)
        assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain; version=")
