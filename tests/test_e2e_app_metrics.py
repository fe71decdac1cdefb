"""End to end: the app's own prometheus_client metrics, summed across workers by the master.

A FastAPI app (tests/apps/prometheus_app.py) counts its requests in a Counter on two
workers; the master's /metrics (written by prometheus_client) shows asgictl's families
followed by the app's total. A SIGKILLed worker's live gauge goes away (its files are
marked dead), its counts stay; the private multiprocess directory is gone after exit.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import run_asgictl, wait_until

TIMEOUT = 10.0


def scrape(url: str) -> tuple[str, dict]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    return text, {family.name: family for family in text_string_to_metric_families(text)}


def app_value(families: dict, family: str, sample: str) -> float | None:
    found = families.get(family)
    values = [s.value for s in found.samples if s.name == sample] if found else []
    return sum(values) if values else None


@pytest.mark.parametrize("preload", [False, True], ids=["fork-imports", "preload"])
def test_app_counter_is_summed_across_workers(preload: bool) -> None:
    args = ["start", "prometheus_app:app", "--workers", "2", "--port", "0", "--no-access-log"]
    args += ["--metrics-bind", "127.0.0.1:0", *(["--preload"] if preload else [])]
    with run_asgictl(args) as server:
        metrics_url = server.wait_for_line(r"Metrics: (http://\S+/metrics)").group(1)
        directory = server.wait_for_line(r"PROMETHEUS_MULTIPROC_DIR=(\S+)").group(1)
        assert Path(directory).is_dir()
        # Hit both workers: a new connection each time, until both pids have answered.
        pids: dict[int, int] = {}
        sent = 0
        while (len(pids) < 2 or sent < 20) and sent < 400:
            body = httpx.get(server.url + "/hit", timeout=TIMEOUT).json()
            assert body["multiproc_dir"] == directory
            pids[body["pid"]] = pids.get(body["pid"], 0) + 1
            sent += 1
        assert len(pids) == 2, f"one worker answered all {sent} requests"

        text, families = scrape(metrics_url)
        assert app_value(families, "myapp_hits", "myapp_hits_total") == sent
        assert app_value(families, "myapp_live_workers", "myapp_live_workers") == 2
        # asgictl's own families first, then the app's.
        assert text.index("asgictl_requests_total") < text.index("myapp_hits_total")
        # The library negotiates the format: OpenMetrics for a scraper that asks for it.
        r = httpx.get(metrics_url, headers={"accept": "application/openmetrics-text; version=1.0.0"})
        assert r.headers["content-type"].startswith("application/openmetrics-text")
        assert r.text.rstrip().endswith("# EOF") and "myapp_hits_total" in r.text

        # A worker killed outright: its counts stay in the sum, its live gauge goes.
        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        server.wait_for_line(rf"pid {victim}\) was killed by SIGKILL")
        server.wait_for_line(r"Worker \d \(pid \d+\) ready in .*\n?", timeout=30)

        def settled() -> dict | None:
            families = scrape(metrics_url)[1]
            live = app_value(families, "myapp_live_workers", "myapp_live_workers")
            return families if live == 2 and server.output.count(") ready in ") >= 3 else None

        families = wait_until(settled, what="the replacement worker live, the dead one gone")
        assert app_value(families, "myapp_hits", "myapp_hits_total") == sent
    assert server.proc.returncode is not None
    assert not Path(directory).exists(), "the multiprocess directory outlived the master"
