"""End to end: several masters on one machine, found and told apart by ``asgictl``;
and discovery's rules for entries, against fake masters on real sockets.

Each test gives its masters a runtime directory of their own (``XDG_RUNTIME_DIR``, a
short temporary directory: socket paths are limited to 107 bytes), so it sees neither
the developer's masters nor another test's. Real ``asgictl start`` masters, real
``python -m asgictl`` control commands; every wait polls with a deadline and every
process is ended by its PID (``run_asgictl``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import support
from support import ServerProcess, run_asgictl, wait_until

from asgictl.control.client import ControlError, discover, locate
from asgictl.control.protocol import encode

DEADLINE = 30.0


@dataclass
class Runtime:
    """A private runtime directory and the environment that points masters at it."""

    base: Path
    env: dict[str, str]
    stack: contextlib.ExitStack

    @property
    def directory(self) -> Path:
        """Where the masters' entries live: ``$XDG_RUNTIME_DIR/asgictl``."""
        return self.base / "asgictl"

    def entries(self) -> set[str]:
        return set(os.listdir(self.directory)) if self.directory.exists() else set()

    def start(self, app: str, *extra: str, workers: int = 1) -> ServerProcess:
        """Start a master (not waiting for it: see :meth:`ready`)."""
        args = ["start", app, "--workers", str(workers), "--port", "0", "--no-access-log", *extra]
        return self.stack.enter_context(run_asgictl(args, env=self.env, ready=False))

    def ctl(self, *args: str, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *python, "-m", "asgictl", *args],
            capture_output=True,
            text=True,
            timeout=90,
            env=self.env,
            cwd=support.APPS,
            stdin=subprocess.DEVNULL,
        )


def ready(*servers: ServerProcess) -> None:
    for server in servers:
        server.wait_for_line(r"workers? ready")
        server.wait_ready()


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    base = Path(tempfile.mkdtemp(prefix="asgictl-"))
    try:
        with contextlib.ExitStack() as stack:
            yield Runtime(base, support.test_env(XDG_RUNTIME_DIR=str(base)), stack)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stdout == "", result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


#: What ``asgictl status`` may import of asgictl: the option table and the control client.
CLIENT_MODULES = re.compile(r"asgictl(\.(cli|config|control(\.\w+)?))?")


def test_every_master_has_its_own_socket_and_status_lists_them_all(runtime: Runtime) -> None:
    pid_dir = Path(tempfile.mkdtemp(prefix="asgictl-", dir=runtime.base))
    first = runtime.start("svapp:app")
    second = runtime.start("svapp:app", "--pid-file", str(pid_dir / "app.pid"))
    third = runtime.start("basic:app", workers=2)
    ready(first, second, third)
    masters = (first, second, third)
    for server in masters:
        # Nobody passed a control option but the pid file: nothing to warn about.
        assert "WARNING" not in server.output, server.output
    assert f"Control socket: {runtime.directory}/{first.pid}.ctl (asgictl status {first.pid})" in first.output
    assert f"Control socket: {pid_dir}/app.ctl (asgictl status {second.pid})" in second.output
    assert runtime.entries() == {f"{m.pid}.ctl" for m in masters}
    assert os.readlink(runtime.directory / f"{second.pid}.ctl") == str(pid_dir / "app.ctl")
    assert (runtime.directory.stat().st_mode & 0o777) == 0o700

    listing = runtime.ctl("status", python=("-X", "importtime"))
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["PID", "APP", "STATE", "WORKERS", "UPTIME", "DIRECTORY", "LISTENERS"]
    expected = [(first, "svapp:app", "1/1"), (second, "svapp:app", "1/1"), (third, "basic:app", "2/2")]
    assert len(rows) == 3
    for row, (server, app, workers) in zip(rows, sorted(expected, key=lambda e: e[0].pid), strict=True):
        pid, name, state, count, uptime, directory, listener = row.split()
        assert (int(pid), name, state, count) == (server.pid, app, "ready", workers)
        assert re.fullmatch(r"[\d.]+s|\d+m\d\ds", uptime), uptime
        assert (directory, listener) == (str(support.APPS), server.url)
    # The client loads the option table and the control package, none of the server.
    imported = set(re.findall(r"^import time:.*\|\s+(asgictl[\w.]*)$", listing.stderr, re.MULTILINE))
    assert "asgictl.control.client" in imported
    assert not {m for m in imported if not CLIENT_MODULES.fullmatch(m)}, sorted(imported)

    as_json = runtime.ctl("status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    reports = json.loads(as_json.stdout)
    assert sorted(r["master"]["pid"] for r in reports) == sorted(m.pid for m in masters)
    assert all(r["master"]["directory"] == str(support.APPS) for r in reports)

    by_pid_file = runtime.ctl("status", "--pid-file", str(pid_dir / "app.pid"))
    assert by_pid_file.returncode == 0, by_pid_file.stderr
    assert f"svapp:app · master {second.pid} ready" in by_pid_file.stdout.splitlines()[0]


def test_acting_commands_refuse_several_masters_and_select_by_app_or_pid(runtime: Runtime) -> None:
    svapp = runtime.start("svapp:app")
    basic = runtime.start("basic:app")
    ready(svapp, basic)
    for command in (["reload"], ["scale", "+1"], ["stop"]):
        refused = runtime.ctl(*command)
        assert refused.returncode == 2
        line = one_line(refused)
        assert f"2 masters are running; choose one by app or master pid (asgictl {command[0]} PID)" in line
        assert f"{svapp.pid} (svapp:app in {support.APPS})" in line and f"{basic.pid} (basic:app" in line
    assert svapp.proc.poll() is None and basic.proc.poll() is None

    detailed = runtime.ctl("status", "basic")  # the app's module selects it too
    assert detailed.returncode == 0, detailed.stderr
    assert f"basic:app · master {basic.pid} ready · 1/1 workers ready" in detailed.stdout

    scaled = runtime.ctl("scale", "basic:app", "2")
    assert scaled.returncode == 0, scaled.stderr
    assert "Scaled from 1 to 2 workers: 2 ready" in scaled.stdout
    reloaded = runtime.ctl("reload", str(svapp.pid))
    assert reloaded.returncode == 0, reloaded.stderr
    assert "Reloaded 1/1 workers" in reloaded.stdout

    unknown = runtime.ctl("status", "nope")
    assert unknown.returncode == 1
    assert "no running master matches 'nope' (running: " in one_line(unknown)

    stopped = runtime.ctl("stop", "svapp:app")
    assert stopped.returncode == 0, stopped.stderr
    assert f"Stopped master {svapp.pid}" in stopped.stdout
    assert svapp.wait_exit(DEADLINE) == 0
    assert runtime.entries() == {f"{basic.pid}.ctl"}

    # One master left: no selection needed, and status shows it in detail.
    alone = runtime.ctl("status")
    assert alone.returncode == 0, alone.stderr
    assert f"basic:app · master {basic.pid} ready · 2/2 workers ready" in alone.stdout.splitlines()[0]
    assert runtime.ctl("stop").returncode == 0
    assert basic.wait_exit(DEADLINE) == 0
    assert runtime.entries() == set()
    gone = runtime.ctl("status")
    assert gone.returncode == 1
    assert one_line(gone).startswith("asgictl: no asgictl server is running (none in ")


def test_status_watch_follows_the_selected_masters_as_they_come_and_go(runtime: Runtime) -> None:
    first = runtime.start("svapp:app")
    second = runtime.start("svapp:app")
    other = runtime.start("basic:app")
    ready(first, second, other)
    with subprocess.Popen(
        [sys.executable, "-m", "asgictl", "status", "svapp", "--watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=runtime.env,
        cwd=support.APPS,
    ) as watch:
        try:
            assert watch.stdout is not None
            # One JSON list per refresh: the two svapp masters, never basic:app.
            pids = [r["master"]["pid"] for r in json.loads(watch.stdout.readline())]
            assert sorted(pids) == sorted([first.pid, second.pid])
            assert runtime.ctl("stop", str(first.pid)).returncode == 0
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:  # bounded: a line comes every second
                pids = [r["master"]["pid"] for r in json.loads(watch.stdout.readline())]
                assert other.pid not in pids
                if pids == [second.pid]:
                    break
            else:
                raise AssertionError("status --watch still lists the stopped master")
            watch.send_signal(signal.SIGINT)  # Ctrl-C ends the watch, status 0
            assert watch.wait(DEADLINE) == 0
        finally:
            if watch.poll() is None:
                watch.kill()


def _dead_socket(path: Path, age: float = 0.0) -> None:
    """A socket file nobody listens on, as a master killed with SIGKILL leaves, last
    changed ``age`` seconds ago."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))


def test_entries_of_dead_masters_are_removed_never_reported(runtime: Runtime) -> None:
    killed = runtime.start("svapp:app")
    control = Path(tempfile.mkdtemp(prefix="asgictl-", dir=runtime.base)) / "c.ctl"
    survivor = runtime.start("basic:app", "--control-socket", str(control))
    ready(killed, survivor)
    assert runtime.entries() == {f"{killed.pid}.ctl", f"{survivor.pid}.ctl"}
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait_exit(DEADLINE) == -signal.SIGKILL
    # A live pid whose entry nobody has listened on for a minute: the pid was reused.
    reused = runtime.directory / f"{os.getpid()}.ctl"
    _dead_socket(reused, age=60)
    # The same, just bound: perhaps a master between bind() and listen(); left alone.
    young = runtime.directory / f"{os.getppid()}.ctl"
    _dead_socket(young)

    status = runtime.ctl("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["master"]["pid"] == survivor.pid  # one master: the detailed view
    assert runtime.entries() == {f"{survivor.pid}.ctl", young.name}
    young.unlink()

    stopped = runtime.ctl("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert survivor.wait_exit(DEADLINE) == 0
    assert runtime.entries() == set() and not control.exists()


def test_a_usr2_upgrade_hands_the_socket_to_the_new_master(runtime: Runtime) -> None:
    control = Path(tempfile.mkdtemp(prefix="asgictl-", dir=runtime.base)) / "c.ctl"
    old = runtime.start("svapp:app", "--control-socket", str(control))
    ready(old)
    new = 0
    try:
        old.signal(signal.SIGUSR2)
        new = int(old.wait_for_line(r"started a new master \(pid (\d+)\)").group(1))
        assert old.wait_exit(DEADLINE) == 0  # it retires once the new master serves
        # The old master's entry pointed at the path the new one took over: it is gone.
        assert runtime.entries() == {f"{new}.ctl"}
        status = runtime.ctl("status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["master"]["pid"] == new
        stopped = runtime.ctl("stop")
        assert stopped.returncode == 0, stopped.stderr
        wait_until(lambda: not psutil.pid_exists(new) or psutil.Process(new).status() == "zombie")
        assert runtime.entries() == set() and not control.exists()
    finally:
        if new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(new, signal.SIGKILL)


def test_a_runtime_directory_open_to_others_is_refused_in_one_line(runtime: Runtime) -> None:
    runtime.directory.mkdir(mode=0o755)
    runtime.directory.chmod(0o755)  # another user could swap the sockets in it
    server = runtime.start("svapp:app")
    assert server.wait_exit(DEADLINE) == 2
    lines = server.output.strip().splitlines()
    assert lines[-1] == (
        f"asgictl: error: control socket: {runtime.directory} is open to other users"
        " (mode 0755, expected 0700); give one with --control-socket PATH"
    ), server.output
    assert "Booting worker" not in server.output


# ------------------------------------------------- discovery's rules, against fake masters


@contextlib.contextmanager
def fake_master(path: Path, pid: int, app: str = "m:app") -> Iterator[None]:
    """A socket at ``path`` answering every request line with a ``hello`` of ``pid``."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn, conn.makefile("rb") as lines:
                for _ in lines:
                    conn.sendall(encode({"v": 1, "ok": True, "pid": pid, "app": app, "directory": "/srv"}))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)
        server.close()
        path.unlink()


def test_discover_keeps_live_masters_and_removes_the_dead(tmp_path: Path) -> None:
    directory = tmp_path / "rt"
    directory.mkdir(0o700)
    me, parent = os.getpid(), os.getppid()
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # never a process
    _dead_socket(directory / f"{dead}.ctl")  # a master killed with SIGKILL
    os.symlink(tmp_path / "gone.sock", directory / f"{dead + 1}.ctl")  # its socket elsewhere
    _dead_socket(directory / f"{me}.ctl", age=60)  # a live pid nobody listens for: reused
    (directory / "notes.txt").write_text("not an entry")
    elsewhere = tmp_path / "taken-over.sock"
    with fake_master(directory / f"{parent}.ctl", parent), fake_master(elsewhere, parent):
        # Pid 1's entry leads to a socket another master took over (a USR2 upgrade).
        os.symlink(elsewhere, directory / "1.ctl")
        found = discover(str(directory))
        assert [(m.pid, m.app) for m in found] == [(parent, "m:app")]
        assert sorted(os.listdir(directory)) == sorted(["1.ctl", f"{parent}.ctl", "notes.txt"])


def test_discover_trusts_no_directory_open_to_others(tmp_path: Path) -> None:
    directory = tmp_path / "rt"
    directory.mkdir(0o755)
    directory.chmod(0o755)
    with fake_master(directory / f"{os.getppid()}.ctl", os.getppid()):
        assert discover(str(directory)) == []


def test_locate_by_pid_file(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    pid_file = tmp_path / "app.pid"
    with pytest.raises(ControlError, match="no asgictl server is running \\(no pid file"):
        locate(None, str(pid_file), None, env)
    pid_file.write_text(f"{os.getppid()}\n")
    with fake_master(tmp_path / "app.ctl", os.getppid()):  # the socket beside the pid file
        (found,) = locate(None, str(pid_file), None, env)
        assert found.pid == os.getppid()
    pid_file.write_text("12\n")
    with fake_master(tmp_path / "app.ctl", os.getppid()), pytest.raises(ControlError, match="not 12"):
        locate(None, str(pid_file), None, env)
