"""The WSGI and file-response scenarios and their servers: a table of their own.

Importing this module adds them to the harness's lists (``servers.SERVERS``,
``scenarios.SCENARIOS``, their baselines and expected bodies); run.py imports it.

- group ``wsgi``: WSGI apps (``wsgi_apps.py``, ``django_app.py``) under asgictl (its
  default thread pool, and ``--wsgi-inline``), gunicorn's sync worker, gunicorn's gthread
  worker with 8 threads (the baseline) and ``granian --interface wsgi``;
- group ``files``: a 64 KiB and a 10 MiB file: asgictl and granian with
  ``http.response.pathsend``, uvicorn and asgictl sending the bytes as a body, gunicorn
  (gthread) and asgictl serving a WSGI app that returns ``wsgi.file_wrapper``.

A server may run another app of the same answer than the scenario names: ``mapped``
rewrites the app per server (the file scenarios name the pathsend app; uvicorn has no
pathsend and runs the body app, gunicorn the WSGI one).
"""

from __future__ import annotations

import wsgi_apps

from harness import scenarios, servers
from harness.scenarios import Scenario
from harness.servers import HOST, ArgsFn, ServerSpec, asgictl_args, uvicorn_args


def mapped(args: ArgsFn, apps: dict[str, str]) -> ArgsFn:
    """``args`` with the scenario's app replaced by this server's app of the same answer."""
    return lambda app, port: args(apps.get(app, app), port)


def gunicorn_wsgi_args(*extra: str) -> ArgsFn:
    """``gunicorn APP --bind --workers 1 EXTRA`` (a WSGI worker class in EXTRA)."""
    return lambda app, port: [app, "--bind", f"{HOST}:{port}", "--workers", "1", *extra]


def granian_wsgi_args(interface: str = "wsgi") -> ArgsFn:
    return lambda app, port: [
        "--interface",
        interface,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-log",
        app,
    ]


_TO_BODY = {"files_apps:pathsend64k": "files_apps:body64k", "files_apps:pathsend10m": "files_apps:body10m"}
_TO_WSGI = {"files_apps:pathsend64k": "wsgi_apps:file64k", "files_apps:pathsend10m": "wsgi_apps:file10m"}

WSGI_SERVERS = [
    ServerSpec("asgictl-wsgi", "wsgi", "asgictl", asgictl_args()),
    ServerSpec("asgictl-wsgi-inline", "wsgi", "asgictl", asgictl_args("--wsgi-inline")),
    ServerSpec("gunicorn-gthread", "wsgi", "gunicorn", gunicorn_wsgi_args("-k", "gthread", "--threads", "8")),
    ServerSpec("gunicorn-sync", "wsgi", "gunicorn", gunicorn_wsgi_args("-k", "sync")),
    ServerSpec("granian-wsgi", "wsgi", "granian", granian_wsgi_args()),
    ServerSpec("uvicorn-body", "files", "uvicorn", mapped(uvicorn_args(), _TO_BODY)),
    ServerSpec("asgictl-pathsend", "files", "asgictl", asgictl_args()),
    ServerSpec("asgictl-body", "files", "asgictl", mapped(asgictl_args(), _TO_BODY)),
    ServerSpec("granian-pathsend", "files", "granian", granian_wsgi_args("asgi")),
    ServerSpec(
        "gunicorn-filewrapper",
        "files",
        "gunicorn",
        mapped(gunicorn_wsgi_args("-k", "gthread", "--threads", "8"), _TO_WSGI),
    ),
    ServerSpec("asgictl-filewrapper", "files", "asgictl", mapped(asgictl_args(), _TO_WSGI)),
]

WSGI_SCENARIOS = [
    Scenario(
        "wsgi-hello",
        "WSGI: GET 13-byte hello, 16 connections",
        "wsgi_apps:hello",
        connections=16,
        group="wsgi",
    ),
    Scenario(
        "wsgi-stream1m",
        "WSGI: 1 MiB streamed from a generator in 64 KiB pieces, 4 connections",
        "wsgi_apps:stream",
        connections=4,
        group="wsgi",
    ),
    Scenario(
        "wsgi-post10k",
        "WSGI: POST 10 KiB read from wsgi.input and echoed, 16 connections",
        "wsgi_apps:echo",
        kind="post",
        connections=16,
        group="wsgi",
    ),
    Scenario(
        "wsgi-django",
        "WSGI: a Django JSON view behind its usual middleware, 16 connections",
        "django_app:application",
        path="/items/42?q=widget",
        connections=16,
        group="wsgi",
    ),
    Scenario(
        "file-64k",
        "a 64 KiB file response, 16 connections",
        "files_apps:pathsend64k",
        connections=16,
        group="files",
    ),
    Scenario(
        "file-10m",
        "a 10 MiB file response, 4 connections",
        "files_apps:pathsend10m",
        connections=4,
        group="files",
    ),
]


def _register() -> None:
    names = {spec.name for spec in servers.SERVERS}
    servers.SERVERS.extend(spec for spec in WSGI_SERVERS if spec.name not in names)
    servers.SERVERS_BY_NAME.update({spec.name: spec for spec in WSGI_SERVERS})
    known = {scenario.name for scenario in scenarios.SCENARIOS}
    scenarios.SCENARIOS.extend(s for s in WSGI_SCENARIOS if s.name not in known)
    scenarios.SCENARIOS_BY_NAME.update({s.name: s for s in WSGI_SCENARIOS})
    scenarios.GROUP_BASELINES.update({"wsgi": "gunicorn-gthread", "files": "uvicorn-body"})
    scenarios.EXPECTED_BODIES.update(
        {
            "wsgi_apps:hello": wsgi_apps.HELLO_BODY,
            "wsgi_apps:stream": wsgi_apps.STREAM_PIECE * wsgi_apps.STREAM_PIECES,
            "files_apps:pathsend64k": wsgi_apps.file_body("64k"),
            "files_apps:pathsend10m": wsgi_apps.file_body("10m"),
        }
    )


_register()
