"""The scenarios that are not a wrk run, in the order a full run takes them.

The wrk scenarios are in ``scenarios.py``; these (``metrics.MetricScenario``) have their
own servers, columns and measuring code in ``ws.py``, ``idle.py`` and ``lifecycle.py``.
"""

from __future__ import annotations

from harness import idle, lifecycle, ws
from harness.metrics import MetricScenario

METRIC_SCENARIOS: list[MetricScenario] = [ws.WS_ECHO, idle.IDLE_RSS, lifecycle.STARTUP, lifecycle.RESPAWN]
METRIC_SCENARIOS_BY_NAME = {scenario.name: scenario for scenario in METRIC_SCENARIOS}
