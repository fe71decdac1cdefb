"""The scenarios that are not a wrk run, in the order a full run takes them.

The wrk scenarios are in ``scenarios.py``; these (``metrics.MetricScenario``) have their
own servers, columns and measuring code in ``ws.py``, ``h2load.py`` (HTTP/2), ``idle.py``
and ``lifecycle.py``.
"""

from __future__ import annotations

from harness import idle, lifecycle, ws
from harness.h2load import H2_SCENARIOS
from harness.metrics import MetricScenario

METRIC_SCENARIOS: list[MetricScenario] = [
    ws.WS_ECHO,
    *H2_SCENARIOS,
    idle.IDLE_RSS,
    lifecycle.STARTUP,
    lifecycle.RESPAWN,
]
METRIC_SCENARIOS_BY_NAME = {scenario.name: scenario for scenario in METRIC_SCENARIOS}
