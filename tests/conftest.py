"""Shared fixtures: the test apps directory is importable; every server is ended by PID."""

from __future__ import annotations

import sys

from support import APPS

sys.path.insert(0, str(APPS))
