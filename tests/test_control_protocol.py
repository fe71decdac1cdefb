"""Unit tests of the control package without a master or a socket: the protocol's
definitions and checks, where sockets live, selection, and the list view. Discovery
against sockets is in test_e2e_discovery.py.
"""

from __future__ import annotations

import ast
import os
import stat
import sys
from pathlib import Path

import pytest

from asgictl.config import ConfigError
from asgictl.control import protocol
from asgictl.control.client import ControlError, Running, only_one
from asgictl.control.protocol import (
    COMMANDS,
    ProtocolError,
    check_request,
    decode,
    encode,
    master_socket_path,
    private_dir_problem,
    request,
    runtime_dir,
)
from asgictl.control.render import format_list
from asgictl.supervisor.control import HANDLERS, prepare_runtime_dir

# ---------------------------------------------------------------------------- protocol


def test_every_command_has_one_handler_and_every_handler_a_command() -> None:
    assert set(HANDLERS) == set(COMMANDS)


def test_the_protocol_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(protocol.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.partition(".")[0])
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported


def test_requests_round_trip_and_checked_arguments() -> None:
    line = encode(request("scale", delta=-2))
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    command, arguments = check_request(decode(line[:-1]))
    assert command is COMMANDS["scale"] and command.acts and arguments == {"delta": -2}
    command, arguments = check_request({"v": 1, "cmd": "hello", "id": "x"})
    assert command.name == "hello" and not command.acts and arguments == {}
    with pytest.raises(ProtocolError, match="unknown argument"):
        request("stop", quick=True)  # the client catches its own mistakes too


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"v": 2, "cmd": "status"}, "unsupported protocol version 2"),
        ({"cmd": "status"}, "unsupported protocol version None"),
        ({"v": 1, "cmd": "dance"}, "unknown command 'dance'"),
        ({"v": 1, "cmd": ["status"]}, "unknown command"),
        ({"v": 1, "cmd": "status", "verbose": True}, "status: unknown argument verbose"),
        ({"v": 1, "cmd": "scale", "count": True}, "scale: count is an integer"),
        ({"v": 1, "cmd": "scale", "delta": "1"}, "scale: delta is an integer"),
        ({"v": 1, "cmd": "stop", "fast": 1}, "stop: fast is true or false"),
    ],
)
def test_check_request_refuses(message: dict[str, object], error: str) -> None:
    with pytest.raises(ProtocolError) as info:
        check_request(message)
    assert str(info.value).startswith(error)


@pytest.mark.parametrize("line", [b"hello", b"[1, 2]", b"\xff", b'"text"'])
def test_decode_refuses_what_is_not_an_object(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a JSON object"):
        decode(line)


# ------------------------------------------------------------------------------- paths


def test_runtime_dir(tmp_path: Path) -> None:
    assert runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)}) == str(tmp_path / "asgictl")
    fallback = f"asgictl-{os.getuid()}"
    for unusable in ({}, {"XDG_RUNTIME_DIR": "relative"}, {"XDG_RUNTIME_DIR": str(tmp_path / "missing")}):
        assert os.path.basename(runtime_dir(unusable)) == fallback


def test_master_socket_path_precedence(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert master_socket_path(42, None, None, env) == str(tmp_path / "asgictl" / "42.ctl")
    assert master_socket_path(42, None, "/run/app.pid", env) == "/run/app.ctl"
    assert master_socket_path(42, None, "/run/app", env) == "/run/app.ctl"
    assert master_socket_path(42, "/run/c.sock", "/run/app.pid", env) == "/run/c.sock"


def test_private_dir_problem(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(0o700)
    assert private_dir_problem(str(private)) is None
    private.chmod(0o750)
    assert "open to other users (mode 0750" in (private_dir_problem(str(private)) or "")
    (tmp_path / "file").write_text("")
    assert "not a directory" in (private_dir_problem(str(tmp_path / "file")) or "")
    assert private_dir_problem(str(tmp_path / "missing")) is not None


# --------------------------------------------------------------------------- discovery


def _masters() -> list[Running]:
    return [
        Running("/a", 10, {"pid": 10, "app": "shop.main:app", "directory": "/srv/shop"}),
        Running("/b", 20, {"pid": 20, "app": "blog:app", "directory": "/srv/blog"}),
        Running("/c", 30, {"pid": 30, "app": "blog:app", "directory": "/srv/blog2"}),
    ]


@pytest.mark.parametrize(
    ("selection", "pids"), [("10", [10]), ("shop.main:app", [10]), ("shop.main", [10]), ("blog", [20, 30])]
)
def test_selection_by_pid_app_or_module(selection: str, pids: list[int]) -> None:
    assert [m.pid for m in _masters() if m.matches(selection)] == pids


def test_only_one_refuses_several_naming_them() -> None:
    assert only_one(_masters()[:1], "stop").pid == 10
    with pytest.raises(ControlError) as info:
        only_one(_masters()[1:], "reload")
    assert info.value.code == 2
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "reload: 2 masters are running; choose one by app or master pid (asgictl reload PID):"
        " 20 (blog:app in /srv/blog), 30 (blog:app in /srv/blog2)"
    )


# -------------------------------------------------------------------------------- view


def test_list_view_one_line_per_master() -> None:
    def report(pid: int, app: str, states: list[str], target: int, age: float) -> dict[str, object]:
        master = {
            "pid": pid,
            "app": app,
            "state": "ready",
            "target": target,
            "age": age,
            "directory": f"/srv/{pid}",
            "listeners": [f"http://127.0.0.1:{pid}"],
        }
        return {"master": master, "workers": [{"state": s} for s in states]}

    reports = [report(10, "a:app", ["ready", "booting"], 2, 5.0), report(2000, "bb:app", [], 1, 7300)]
    lines = format_list(reports).splitlines()
    assert lines[0].split() == ["PID", "APP", "STATE", "WORKERS", "UPTIME", "DIRECTORY", "LISTENERS"]
    assert lines[1].split() == ["10", "a:app", "ready", "1/2", "5.0s", "/srv/10", "http://127.0.0.1:10"]
    assert lines[2].split() == [
        "2000",
        "bb:app",
        "ready",
        "0/1",
        "2h01m",
        "/srv/2000",
        "http://127.0.0.1:2000",
    ]
    assert lines[1].index("a:app") == lines[2].index("bb:app")  # aligned columns
    assert format_list([]) == "no asgictl server is running"


def test_prepare_runtime_dir_creates_it_private_and_refuses_an_open_one(tmp_path: Path) -> None:
    directory = tmp_path / "asgictl"
    prepare_runtime_dir(str(directory))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    prepare_runtime_dir(str(directory))  # already there: fine
    directory.chmod(0o711)
    with pytest.raises(ConfigError, match="open to other users \\(mode 0711"):
        prepare_runtime_dir(str(directory))
