"""Facts about the machine and software, recorded with every result file."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import procstat
from harness.bootstrap import REPO_ROOT
from harness.wrk import WRK

PACKAGES = (
    "asgictl",
    "uvicorn",
    "uvloop",
    "httptools",
    "h11",
    "websockets",
    "wsproto",
    "granian",
    "gunicorn",
    "uvicorn-worker",
    "fastapi",
    "starlette",
    "pydantic",
    "pydantic-core",
    "matplotlib",
)


def cpu_model() -> str:
    """The first ``model name`` of /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that matter (None if not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def all_distributions() -> dict[str, str]:
    """Every distribution in the venv with its version (like ``pip freeze``)."""
    return dict(sorted((dist.metadata["Name"], dist.version) for dist in importlib.metadata.distributions()))


def command_output(cmd: list[str], cwd: Path | None = None) -> str | None:
    """First line of a command's output, or None if it fails."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if proc.returncode in (0, 1) and lines else None


def git_info() -> dict[str, Any]:
    """Commit and dirtiness of the repo under test."""
    commit = command_output(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT)
    status = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=10
    )
    return {
        "commit": commit if commit and len(commit) == 40 else None,
        "dirty_files": len(status.stdout.splitlines()) if status.returncode == 0 else None,
    }


def machine_info() -> dict[str, Any]:
    """Everything needed to judge whether two result files are comparable."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version,
        "python_executable": sys.executable,
        "wrk_version": command_output([WRK, "-v"]),
        "load_average_start": procstat.load_average(),
        "git": git_info(),
        "packages": package_versions(),
        "all_packages": all_distributions(),
    }
