"""Create ``benchmarks/.venv`` and install the peers and asgictl into it.

Standard library only: this module runs under whatever ``python3`` the user started
``run.py`` with, before the venv exists.

The install is skipped when a stamp file in the venv matches the hash of
``requirements.txt`` and of the repo's ``pyproject.toml`` (so editing either triggers a
reinstall); ``--reinstall`` forces it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = BENCH_DIR.parent
VENV_DIR = BENCH_DIR / ".venv"
REQUIREMENTS = BENCH_DIR / "requirements.txt"
PYPROJECT = REPO_ROOT / "pyproject.toml"
STAMP = VENV_DIR / ".bench-install-stamp"
REEXEC_FLAG = "ASGICTL_BENCH_IN_VENV"


def venv_python() -> Path:
    """Path of the venv's interpreter."""
    return VENV_DIR / "bin" / "python"


def running_in_venv() -> bool:
    """True when this interpreter is the benchmark venv's."""
    return Path(sys.prefix).resolve() == VENV_DIR.resolve()


def install_fingerprint() -> str:
    """Hash of everything that decides what gets installed."""
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, PYPROJECT):
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.exists() else b"<absent>")
    return digest.hexdigest()


def pip(*args: str) -> None:
    """Run the venv's pip, echoing the command."""
    cmd = [str(venv_python()), "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def install(reinstall: bool) -> None:
    """Install requirements.txt and (if the repo has a pyproject.toml) asgictl itself."""
    fingerprint = install_fingerprint()
    if not reinstall and STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    pip("install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS))
    if PYPROJECT.exists():
        pip("install", "--quiet", "--disable-pip-version-check", "-e", str(REPO_ROOT))
    else:
        print(f"note: {PYPROJECT} does not exist yet; asgictl is not installed", flush=True)
    STAMP.write_text(fingerprint)


def ensure_venv(reinstall: bool = False) -> None:
    """Create the venv if needed, install into it, and re-exec run.py inside it."""
    if running_in_venv() and os.environ.get(REEXEC_FLAG):
        return  # the parent process already installed everything
    if not venv_python().exists():
        print(f"creating {VENV_DIR}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV_DIR)
    install(reinstall)
    if running_in_venv():
        return
    if os.environ.get(REEXEC_FLAG):
        sys.exit(f"error: re-exec into {venv_python()} did not take effect")
    os.environ[REEXEC_FLAG] = "1"
    python = str(venv_python())
    os.execv(python, [python, *sys.argv])
