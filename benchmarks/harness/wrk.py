"""Running wrk and parsing its ``--latency`` report.

wrk is pinned to CPU 0 (``taskset -c 0``) with one thread. Lua scripts are only used
where plain GET is not enough:

- POST: sets ``wrk.method`` / ``wrk.body`` at the top level, so wrk still builds the
  request once (a ``request()`` function would make wrk call Lua per request).
- Pipelining: ``init`` builds 16 requests with ``wrk.format`` and ``request`` returns them
  concatenated, so each write carries 16 requests. wrk counts every response, but its
  latency distribution is then garbage (partly or wholly printed as 0: wrk 4.1 does not
  time pipelined requests), so the harness reports no latency for pipelined runs.

Errors are never hidden: wrk's ``Socket errors`` line (connect/read/write/timeout) and its
``Non-2xx or 3xx responses`` count are parsed and reported. (wrk counts status >= 400 as
errors; none of the benchmark apps answers 3xx.)
"""

from __future__ import annotations

import re
import resource
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

WRK = "/usr/bin/wrk"
WRK_CPU = 0
PIPELINE_DEPTH = 16

POST_SCRIPT = """\
-- POST a {size}-byte body (built once by wrk: no request() function).
wrk.method = "POST"
wrk.body = string.rep("x", {size})
wrk.headers["Content-Type"] = "application/octet-stream"
"""

PIPELINE_SCRIPT = """\
-- Pipeline {depth} GET requests per write.
init = function(args)
  local batch = {{}}
  for i = 1, {depth} do
    batch[i] = wrk.format()
  end
  req = table.concat(batch)
end

request = function()
  return req
end
"""

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # -> milliseconds
_TIME_RE = r"([\d.]+)(us|ms|s|m|h)"


@dataclass
class WrkResult:
    """One wrk run, as parsed from its output (latencies in milliseconds)."""

    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float | None  # None when wrk printed 0 (it does so for pipelined runs)
    p75_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    errors_connect: int = 0
    errors_read: int = 0
    errors_write: int = 0
    errors_timeout: int = 0
    non_2xx: int = 0
    client_cpu_s: float = 0.0
    raw: str = field(default="", repr=False)

    def drop_latency(self) -> None:
        """Forget the latency figures (for runs where wrk cannot measure them)."""
        self.p50_ms = self.p75_ms = self.p90_ms = self.p99_ms = None

    @property
    def socket_errors(self) -> int:
        return self.errors_connect + self.errors_read + self.errors_write + self.errors_timeout

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["socket_errors"] = self.socket_errors
        return data


def write_script(kind: str, directory: Path, post_size: int) -> Path | None:
    """Write the Lua script for a request kind ("get", "post", "pipeline")."""
    if kind == "get":
        return None
    if kind == "post":
        text = POST_SCRIPT.format(size=post_size)
    elif kind == "pipeline":
        text = PIPELINE_SCRIPT.format(depth=PIPELINE_DEPTH)
    else:
        raise ValueError(f"unknown request kind {kind!r}")
    path = directory / f"{kind}.lua"
    path.write_text(text)
    return path


def wrk_command(
    url: str,
    connections: int,
    duration_s: int,
    script: Path | None,
    headers: tuple[tuple[str, str], ...] = (),
) -> list[str]:
    """``taskset -c 0 wrk -t1 -cN -dNs --latency [-H 'Name: value' ...] [-s script] URL``."""
    cmd = ["taskset", "-c", str(WRK_CPU), WRK, "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    for name, value in headers:
        cmd += ["-H", f"{name}: {value}"]
    if script is not None:
        cmd += ["-s", str(script)]
    return [*cmd, url]


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS[unit]


def _search_int(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


def parse_latency_distribution(text: str) -> dict[int, float]:
    """Percentile -> milliseconds from the ``Latency Distribution`` block."""
    return {
        int(pct): _to_ms(value, unit)
        for pct, value, unit in re.findall(rf"^\s+(\d+)%\s+{_TIME_RE}\s*$", text, re.MULTILINE)
    }


def percentile(latency: dict[int, float], pct: int) -> float | None:
    """A latency percentile, None if missing or printed as 0 (wrk's pipelining bug)."""
    return latency.get(pct) or None


def parse_wrk_output(text: str) -> WrkResult:
    """Parse wrk's report; raises ValueError if it is not there."""
    done = re.search(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    latency = parse_latency_distribution(text)
    if not done or not rate or 50 not in latency or 99 not in latency:
        raise ValueError(f"could not parse wrk output:\n{text}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    connect, read, write, timeout = (int(g) for g in errors.groups()) if errors else (0, 0, 0, 0)
    return WrkResult(
        requests=int(done.group(1)),
        duration_s=_to_ms(done.group(2), done.group(3)) / 1e3,
        requests_per_s=float(rate.group(1)),
        p50_ms=percentile(latency, 50),
        p75_ms=percentile(latency, 75),
        p90_ms=percentile(latency, 90),
        p99_ms=percentile(latency, 99),
        errors_connect=connect,
        errors_read=read,
        errors_write=write,
        errors_timeout=timeout,
        non_2xx=_search_int(r"Non-2xx or 3xx responses: (\d+)", text),
        raw=text,
    )


def children_cpu_seconds() -> float:
    """User + system seconds of this process's waited-for children (i.e. past wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(cmd: list[str], duration_s: int) -> WrkResult:
    """Run wrk to completion (bounded by a timeout) and parse its report."""
    cpu_before = children_cpu_seconds()
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed wrk
        raise RuntimeError(f"wrk did not finish within {duration_s + 60}s") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"wrk exited with {proc.returncode} after {time.monotonic() - started:.1f}s:\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    result = parse_wrk_output(proc.stdout)
    result.client_cpu_s = children_cpu_seconds() - cpu_before
    return result
