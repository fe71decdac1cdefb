"""Shared test setup: the test apps directory is importable, and every test is marked
``unit`` (in memory: protocol classes over in-memory transports, pure functions) or
``e2e`` (a real asgictl process, real sockets or an external tool), so that
``pytest -m unit`` runs the fast in-memory tests alone.

Modules named ``test_e2e_*`` and those in ``E2E_MODULES`` are end-to-end as a whole; a
test elsewhere that uses real sockets or processes carries ``@pytest.mark.e2e``.
"""

from __future__ import annotations

import sys

import pytest
from support import APPS

sys.path.insert(0, str(APPS))

#: Modules whose every test runs a real server (in this process or a child).
E2E_MODULES = {"test_api"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__ if item.module is not None else ""
        if module.startswith("test_e2e_") or module in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)
        elif item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.unit)
