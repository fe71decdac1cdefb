"""The supervisor's decisions, as pure functions of numbers (unit-tested without processes).

* respawn back-off: a slot whose workers keep dying is refilled at once the first time,
  then after exponentially growing delays, so a crash loop cannot eat the machine;
* recycle limits: max-requests with per-worker jitter, lifetime with a little jitter, so
  workers started together do not all restart together;
* why a worker should be recycled now (requests, memory, lifetime), if at all.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgictl.config import Config

#: First retry delay after a second consecutive death, and the ceiling.
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
#: A worker that stayed ready this long proves the slot healthy again (failures reset).
STABLE_AFTER = 10.0
#: Consecutive boot failures (no worker became ready in between) after which the master
#: gives up instead of looping: the app is broken, a person must look.
MAX_BOOT_FAILURES = 5
#: Sampling period of worker RSS for --max-worker-memory.
MEMORY_SAMPLE_SECONDS = 1.0

# Reasons, as logged and as status and metrics show them.
CRASH = "crash"
HUNG = "hung"
MAX_REQUESTS = "max-requests"
MEMORY = "memory"
LIFETIME = "lifetime"
RELOAD = "reload"
SCALE = "scale"
BOOT_TIMEOUT = "boot-timeout"
#: A worker stopped because the master stops.
SHUTDOWN = "shutdown"


def backoff_delay(failures: int) -> float:
    """Seconds to wait before refilling a slot after ``failures`` consecutive deaths."""
    if failures <= 1:
        return 0.0
    return min(BACKOFF_BASE * 2 ** (failures - 2), BACKOFF_MAX)


def request_limit(limit: int | None, jitter: int, rng: random.Random | None = None) -> int | None:
    """This worker's max-requests: ``limit`` plus a random 0..jitter (None: no limit)."""
    if limit is None:
        return None
    return limit + ((rng or random).randint(0, jitter) if jitter > 0 else 0)


def lifetime_limit(lifetime: float | None, rng: random.Random | None = None) -> float | None:
    """This worker's lifetime: ``lifetime`` plus up to 10% so a fleet does not restart at once."""
    if lifetime is None:
        return None
    return lifetime * (1.0 + (rng or random).uniform(0.0, 0.1))


@dataclass(frozen=True)
class Limits:
    """One worker's recycle thresholds, drawn when it is forked."""

    requests: int | None
    memory_bytes: int | None
    lifetime: float | None

    @classmethod
    def draw(cls, config: Config, rng: random.Random | None = None) -> Limits:
        """A new worker's thresholds from --limit-max-requests (+ jitter),
        --max-worker-memory (MiB) and --max-worker-lifetime (+ up to 10%)."""
        memory = config.max_worker_memory
        return cls(
            requests=request_limit(config.limit_max_requests, config.max_requests_jitter, rng),
            memory_bytes=int(memory * 1024 * 1024) if memory else None,
            lifetime=lifetime_limit(config.max_worker_lifetime, rng),
        )


def recycle_reason(limits: Limits, requests: int, rss_bytes: int | None, age: float) -> str | None:
    """Why a ready worker should be replaced now, or None."""
    if limits.requests is not None and requests >= limits.requests:
        return MAX_REQUESTS
    if limits.memory_bytes is not None and rss_bytes is not None and rss_bytes > limits.memory_bytes:
        return MEMORY
    if limits.lifetime is not None and age >= limits.lifetime:
        return LIFETIME
    return None


def is_hung(now: float, heartbeat: float, timeout: float) -> bool:
    """A ready worker whose loop has not stamped its heartbeat for ``timeout`` seconds."""
    return now - heartbeat > timeout
