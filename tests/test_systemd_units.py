"""The unit files in systemd/ (checked by ``systemd-analyze``) and asgictl/systemd.py's pieces.

``systemd-analyze verify`` runs offline (no running systemd needed): it loads the unit,
parses every directive and checks that the executables exist. It exits 0 even on unknown
or misspelled directives (it only warns), so the tests also require empty output. The
units name /opt/asgictl/venv/bin/asgictl, which does not exist here: each test verifies a
copy in a temporary directory with that path replaced by this virtualenv's asgictl.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from asgictl import systemd

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
UNIT_NAMES = ["asgictl.service", "asgictl.socket", "asgictl@.service"]
INSTALLED = "/opt/asgictl/venv/bin/asgictl"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian package: systemd)"
)


def _asgictl_executable() -> str:
    found = Path(sys.executable).parent / "asgictl"
    return str(found) if found.exists() else shutil.which("asgictl") or sys.executable


@pytest.fixture(scope="module")
def unit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("units")
    for name in UNIT_NAMES:
        text = (UNITS / name).read_text()
        (out / name).write_text(text.replace(INSTALLED, _asgictl_executable()))
    return out


def directives(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.e2e
@needs_analyze
@pytest.mark.parametrize("unit", [*UNIT_NAMES, "asgictl@shop.service"])
def test_systemd_analyze_verify(unit_dir: Path, unit: str) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", str(unit_dir / unit)],
        cwd=unit_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Warnings (unknown key, bad value ignored) do not change the exit code: none allowed.
    assert (result.stdout + result.stderr).strip() == ""


@pytest.mark.e2e
@needs_analyze
@pytest.mark.parametrize("unit", ["asgictl.service", "asgictl@shop.service"])
def test_security_exposure_is_low(unit_dir: Path, unit: str) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit_dir / unit)],
        cwd=unit_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    # 0 (locked down) .. 10 (unsafe); systemd calls < 2 "OK".
    assert float(match.group(1)) < 2.0, result.stdout


@pytest.mark.parametrize("name", ["asgictl.service", "asgictl@.service"])
def test_service_directives(name: str) -> None:
    d = directives(name)
    assert d["Type"] == ["notify"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["KillMode"] == ["mixed"]
    assert "WatchdogSec" in d and "RuntimeDirectory" in d
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "DynamicUser": "yes",
    }.items():
        assert d[key] == [value], key
    # The stop timeout covers the graceful timeout plus the 5 s the master adds.
    graceful = float(re.search(r"--timeout-graceful-shutdown (\d+)", d["ExecStart"][0]).group(1))  # type: ignore[union-attr]
    assert float(d["TimeoutStopSec"][0]) > graceful + 5


def test_socket_unit_matches_service() -> None:
    sock = directives("asgictl.socket")
    service = directives("asgictl.service")
    path = next(v for v in sock["ListenStream"] if v.startswith("/"))
    # The UDS lives in the service's RuntimeDirectory, and is the trusted proxy peer.
    assert path.startswith(f"/run/{service['RuntimeDirectory'][0]}/")
    assert f"--forwarded-allow-ips {path}" in service["ExecStart"][0]
    assert "asgictl.socket" in service["Requires"][0]


# ----------------------------------------------------------------------------- asgictl.systemd


def _receiver(abstract: bool, tmp_path: Path) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"asgictl-unit-{uuid.uuid4().hex[:10]}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "n.sock")
        if len(address) > 100:
            pytest.skip("temporary path too long for a Unix socket")
        sock.bind(address)
    sock.settimeout(10)
    return sock, address


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram(tmp_path: Path, abstract: bool) -> None:
    receiver, address = _receiver(abstract, tmp_path)
    with receiver:
        notifier = systemd.Notifier.from_environ({"NOTIFY_SOCKET": address})
        assert notifier is not None
        assert notifier.send(READY=1, STATUS="Ready: 1/1 workers")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=Ready: 1/1 workers"
        assert systemd.notify("WATCHDOG=1", {"NOTIFY_SOCKET": address})
        assert receiver.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_notify_failures_never_raise(tmp_path: Path) -> None:
    assert systemd.Notifier.from_environ({}) is None
    assert systemd.Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1"}) is None
    assert not systemd.notify("READY=1", {})
    gone = systemd.Notifier(str(tmp_path / "missing.sock"))
    assert gone.send(READY=1) is False
    assert gone.send(READY=1) is False  # warned once, still no exception


def test_watchdog_seconds() -> None:
    me = os.getpid()
    assert systemd.watchdog_seconds({}) is None
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me)}) == 30.0
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    # After a USR2 re-exec, WATCHDOG_PID still names the old master.
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, pids=(1,)) == 4.0


def test_listen_fds_env() -> None:
    me = str(os.getpid())
    env = {"LISTEN_FDS": "2", "LISTEN_PID": me, "LISTEN_FDNAMES": "web:"}
    # Only parsing here (the descriptors themselves are adopted in test_e2e_systemd).
    passed = systemd.listen_fds(env, unset=True)
    assert [(p.fd, p.name) for p in passed] == [(3, "web"), (4, "unknown")]
    assert env == {}  # unset: children never see them
    other = {"LISTEN_FDS": "1", "LISTEN_PID": "1"}
    assert systemd.listen_fds(other, unset=False) == []  # meant for another process
    assert other == {"LISTEN_FDS": "1", "LISTEN_PID": "1"}
    assert systemd.listen_fds({"LISTEN_FDS": "x", "LISTEN_PID": me}) == []


class _Stats:
    def __init__(self, cells: dict[int, SimpleNamespace]) -> None:
        self.cells = cells

    def read(self, cell: int) -> SimpleNamespace:
        return self.cells[cell]


def test_hooks_watchdog_needs_a_healthy_worker() -> None:
    sent: list[dict[str, object]] = []
    notifier = systemd.Notifier("/nonexistent")
    notifier.send = lambda **fields: sent.append(fields) or True  # type: ignore[method-assign]
    now = time.monotonic()
    hooks = systemd.SystemdHooks(notifier, watchdog=2.0, now=now - 1)
    cell = SimpleNamespace(heartbeat=now, requests=7)
    master = SimpleNamespace(
        workers={10: SimpleNamespace(state="ready", cell=0)},
        stats=_Stats({0: cell}),
        target=1,
        generation=1,
        stopping=False,
        reloading=None,
        upgrade_pid=None,
        old_master=None,
        config=SimpleNamespace(timeout=30.0),
    )
    hooks.tick(master)
    assert sent == [{"WATCHDOG": 1}]
    hooks.tick(master)  # within the interval: nothing
    assert sent == [{"WATCHDOG": 1}]
    hooks._next_ping = 0
    cell.heartbeat = now - 10  # the loop stopped beating
    hooks.tick(master)
    assert sent == [{"WATCHDOG": 1}]
    master.stopping = True  # draining: the master's loop alone keeps pinging
    hooks.tick(master)
    assert sent[-1] == {"WATCHDOG": 1} and len(sent) == 2
    hooks.ready(master)
    assert sent[-1]["READY"] == 1 and "1/1 workers serving, 7 requests" in str(sent[-1]["STATUS"])
    # STATUS= is refreshed when the numbers move, not repeated when they do not.
    master.stopping = False
    hooks.interval = None
    hooks._next_status = 0
    hooks.tick(master)
    assert "READY" in sent[-1]
    cell.requests = 9
    hooks._next_status = 0
    hooks.tick(master)
    assert sent[-1] == {"STATUS": "Ready: 1/1 workers serving, 9 requests by current workers"}


# ----------------------------------------------------------------------------- deploy/


def test_kubernetes_grace_covers_prestop_and_graceful_timeout() -> None:
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert "readinessProbe" in container and "livenessProbe" in container
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    graceful = float(env["ASGICTL_TIMEOUT_GRACEFUL_SHUTDOWN"])
    # preStop, then TERM: graceful drain, then up to 5 s of lifespan shutdown.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful + 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_dockerfile_runs_non_root_with_web_concurrency() -> None:
    text = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    users = re.findall(r"(?m)^USER\s+(\S+)", text)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    cmd = re.findall(r"(?m)^CMD\s+(.+)$", text)[-1]
    assert "asgictl start --workers" in cmd and "$WEB_CONCURRENCY" in cmd
    assert "exec asgictl" in cmd  # the master, not a shell, receives TERM
