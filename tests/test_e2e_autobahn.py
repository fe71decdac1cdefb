"""Autobahn conformance: the Autobahn TestSuite's cases 1.*-7.* and 10.*, driven by the
``kosoku`` runner (its fuzzing client), against a bare ASGI echo app under ``asgictl
serve`` for each WebSocket implementation. No case may be FAILED (OK, NON-STRICT and
INFORMATIONAL are conformant). The table of verdicts is printed (pytest -s shows it).

The slow performance cases (9.*, 12.*, 13.*) are left to benchmarks/.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from support import run_asgictl

kosoku = pytest.importorskip("kosoku")

CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
#: Well above the few seconds a run takes here; bounds a server that stops answering.
RUN_TIMEOUT = 240.0


def run_cases(url: str) -> list[Any]:
    async def main() -> list[Any]:
        try:
            return await asyncio.wait_for(kosoku.run_fuzzingclient(url, CASES, concurrency=2), RUN_TIMEOUT)
        except kosoku.FailureError as failure:
            return list(failure.results)

    return asyncio.run(main())


def table(results: list[Any]) -> str:
    counts: Counter[tuple[str, str, str]] = Counter()
    for r in results:
        counts[(r.case_id.split(".")[0], r.behavior.value, r.behavior_close.value)] += 1
    rows = [f"{'group':>5}  {'behavior':<14} {'close':<14} cases"]
    for (group, behavior, closing), n in sorted(counts.items(), key=lambda kv: (int(kv[0][0]), kv[0][1:])):
        rows.append(f"{group:>5}  {behavior:<14} {closing:<14} {n}")
    return "\n".join(rows)


@pytest.mark.parametrize("ws", ["websockets", "wsproto"])
def test_autobahn_cases_pass(ws: str) -> None:
    args = ["serve", "ws_app:echo", "--port", "0", "--ws", ws, "--no-access-log"]
    with run_asgictl(args) as server:
        results = run_cases(server.url.replace("http://", "ws://", 1))
    print(f"\nAutobahn via kosoku, --ws {ws}: {len(results)} cases\n{table(results)}")
    assert len(results) >= 240, f"only {len(results)} cases ran"
    failed = [
        f"{r.case_id}: {r.behavior.value}/{r.behavior_close.value} {r.result_close}"
        for r in results
        if not r.passed
    ]
    assert not failed, "\n".join(failed)
