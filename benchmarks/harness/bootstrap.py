"""Create ``benchmarks/.venv`` and install the peers and asgictl into it.

Standard library only: this module runs under whatever ``python3`` the user started
``run.py`` with, before the venv exists.

The install is skipped when a stamp file in the venv matches the hash of
``requirements.txt`` and of the repo's ``pyproject.toml`` (so editing either triggers a
reinstall); ``--reinstall`` forces it.

``--python`` picks the interpreter the venv is built with (a path, a command, or a
version such as ``3.13``, looked up on PATH and in pyenv's versions): each version gets
its own venv, ``benchmarks/.venv-3.13``; without it the venv is ``benchmarks/.venv``,
built with the interpreter that started ``run.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = BENCH_DIR.parent
VENV_DIR = BENCH_DIR / ".venv"
REQUIREMENTS = BENCH_DIR / "requirements.txt"
PYPROJECT = REPO_ROOT / "pyproject.toml"
STAMP_NAME = ".bench-install-stamp"
REEXEC_FLAG = "ASGICTL_BENCH_IN_VENV"


def interpreter_version(exe: str) -> str:
    """``X.Y`` of the interpreter ``exe`` (raises OSError or CalledProcessError if it does not run)."""
    out = subprocess.run(
        [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def find_python(spec: str) -> str:
    """The interpreter ``--python SPEC`` names: a path, a command on PATH, or a version
    ("3.13": ``python3.13`` in pyenv's versions, then on PATH). Exits when none runs."""
    by_version = re.fullmatch(r"\d+\.\d+", spec) is not None
    candidates = [spec]
    if by_version:
        root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
        candidates = [str(p) for p in sorted((root / "versions").glob(f"{spec}.*/bin/python{spec}"))]
        candidates.append(f"python{spec}")  # a pyenv shim of a version not selected fails here
    for candidate in candidates:
        exe = shutil.which(candidate)
        if exe is None:
            continue
        try:
            version = interpreter_version(exe)
        except (OSError, subprocess.CalledProcessError):
            continue
        if not by_version or version == spec:
            return exe
    sys.exit(f"error: --python {spec}: no interpreter of that name runs here (tried {', '.join(candidates)})")


def use_python(spec: str | None) -> str:
    """Choose the venv for ``--python SPEC`` (None: ``.venv`` with this interpreter);
    returns the interpreter the venv is built with."""
    global VENV_DIR
    if spec is None:
        VENV_DIR = BENCH_DIR / ".venv"
        return sys.executable
    exe = find_python(spec)
    VENV_DIR = BENCH_DIR / f".venv-{interpreter_version(exe)}"
    return exe


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
    stamp = VENV_DIR / STAMP_NAME
    if not reinstall and stamp.exists() and stamp.read_text() == fingerprint:
        return
    pip("install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS))
    if PYPROJECT.exists():
        pip("install", "--quiet", "--disable-pip-version-check", "-e", str(REPO_ROOT))
    else:
        print(f"note: {PYPROJECT} does not exist yet; asgictl is not installed", flush=True)
    stamp.write_text(fingerprint)


def ensure_venv(reinstall: bool = False, python: str | None = None) -> None:
    """Create the venv of ``--python`` (see :func:`use_python`) if needed, install into
    it, and re-exec run.py inside it."""
    exe = use_python(python)
    if running_in_venv() and os.environ.get(REEXEC_FLAG):
        return  # the parent process already installed everything
    if not venv_python().exists():
        print(f"creating {VENV_DIR} with {exe}", flush=True)
        if exe == sys.executable:
            venv.EnvBuilder(with_pip=True, clear=False).create(VENV_DIR)
        else:
            subprocess.run([exe, "-m", "venv", str(VENV_DIR)], check=True)
    install(reinstall)
    if running_in_venv():
        return
    if os.environ.get(REEXEC_FLAG):
        sys.exit(f"error: re-exec into {venv_python()} did not take effect")
    os.environ[REEXEC_FLAG] = "1"
    python = str(venv_python())
    os.execv(python, [python, *sys.argv])
