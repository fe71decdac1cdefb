"""Unit tests of the supervisor's pieces that need no running master: policy, --bind
parsing, the shared-memory table (across a real fork), the worker's Config, pid files."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgictl.config import Config, ConfigError, resolve
from asgictl.supervisor import policy, reuseport
from asgictl.supervisor.child import child_config
from asgictl.supervisor.listeners import BindSpec, open_listeners, parse_bind, specs_from_config
from asgictl.supervisor.pidfile import PidFile, running_master
from asgictl.supervisor.reuseport import PortGroup, steering_program
from asgictl.supervisor.slots import StatsTable, WorkerState

# ----------------------------------------------------------------------------- policy


def test_backoff_is_immediate_then_exponential_and_capped() -> None:
    delays = [policy.backoff_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0
    assert delays[1:5] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == policy.BACKOFF_MAX
    assert delays == sorted(delays)


def test_request_limit_jitter_stays_in_range_and_varies() -> None:
    rng = random.Random(7)
    limits = {policy.request_limit(100, 10, rng) for _ in range(200)}
    assert limits <= set(range(100, 111)) and len(limits) > 5
    assert policy.request_limit(None, 10, rng) is None
    assert policy.request_limit(100, 0, rng) == 100


def test_lifetime_limit_adds_up_to_ten_percent() -> None:
    rng = random.Random(1)
    values = [policy.lifetime_limit(100.0, rng) for _ in range(100)]
    assert all(100.0 <= v <= 110.0 for v in values if v is not None)
    assert policy.lifetime_limit(None) is None


@pytest.mark.parametrize(
    ("limits", "requests", "rss", "age", "expected"),
    [
        (policy.Limits(None, None, None), 10**9, 10**12, 10**9, None),
        (policy.Limits(100, None, None), 99, None, 0, None),
        (policy.Limits(100, None, None), 100, None, 0, policy.MAX_REQUESTS),
        (policy.Limits(None, 1000, None), 0, 1001, 0, policy.MEMORY),
        (policy.Limits(None, 1000, None), 0, None, 0, None),
        (policy.Limits(None, None, 5.0), 0, None, 5.0, policy.LIFETIME),
        (policy.Limits(10, 1000, 5.0), 10, 2000, 9.0, policy.MAX_REQUESTS),
    ],
)
def test_recycle_reason(
    limits: policy.Limits, requests: int, rss: int | None, age: float, expected: str | None
) -> None:
    assert policy.recycle_reason(limits, requests, rss, age) == expected


def test_is_hung() -> None:
    assert not policy.is_hung(now=100.0, heartbeat=95.0, timeout=30.0)
    assert policy.is_hung(now=100.0, heartbeat=69.0, timeout=30.0)


# ----------------------------------------------------------------------------- --bind


@pytest.mark.parametrize(
    ("url", "spec"),
    [
        ("tcp://127.0.0.1:8000", BindSpec("tcp", host="127.0.0.1", port=8000)),
        ("tcp://[::1]:0", BindSpec("tcp", host="::1", port=0)),
        ("tcp://:9000", BindSpec("tcp", host="0.0.0.0", port=9000)),
        ("localhost:80", BindSpec("tcp", host="localhost", port=80)),
        ("unix:///run/app.sock", BindSpec("unix", path="/run/app.sock")),
        ("fd://3", BindSpec("fd", fd=3)),
    ],
)
def test_parse_bind(url: str, spec: BindSpec) -> None:
    assert parse_bind(url) == spec


@pytest.mark.parametrize(
    "url", ["http://x:1", "tcp://x", "tcp://x:99999", "unix://relative", "fd://three", "tcp://[::1]8000"]
)
def test_parse_bind_refuses_with_one_line(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_bind(url)
    assert str(info.value).startswith("--bind: ") and "\n" not in str(info.value)


def test_specs_default_to_host_and_port() -> None:
    config = Config("m:app", host="127.0.0.1", port=0)
    assert specs_from_config(config) == [BindSpec("tcp", host="127.0.0.1", port=0)]
    config = Config("m:app", bind=["tcp://127.0.0.1:0"], uds="/tmp/x.sock")
    assert [s.kind for s in specs_from_config(config)] == ["tcp", "unix"]


@pytest.mark.parametrize("balance", ["shared", "reuseport"])
def test_open_listeners_binds_before_anything_and_adopts_inherited(tmp_path: Path, balance: str) -> None:
    path = str(tmp_path / "s.sock")
    config = Config("m:app", bind=["tcp://127.0.0.1:0", f"unix://{path}"], balance=balance)
    listeners = open_listeners(config, environ={})
    try:
        if balance == "shared":
            assert len(listeners.sockets) == 2 and not listeners.groups
            tcp = listeners.sockets[0]
        else:  # the TCP address is a group (one socket per slot); the Unix socket is shared
            assert len(listeners.sockets) == 1 and len(listeners.groups) == 1
            tcp = listeners.groups[0].sockets[0]
        assert listeners.owned_paths == [path]
        socket.create_connection(tcp.getsockname(), timeout=5).close()  # listening already
        slot2 = listeners.for_slot(2)  # binds slot 2's socket in the group
        # Adopted as a re-exec'd master would: same sockets by descriptor number.
        environ = listeners.inherit_environ()
        listeners.uninherit()
        dups = {fd: os.dup(fd) for sock in listeners.all_sockets() for fd in [sock.fileno()]}
        for name, value in environ.items():
            for fd, dup in dups.items():
                value = re.sub(rf"\b{fd}\b", str(dup), value)
            environ[name] = value
        adopted = open_listeners(config, environ=environ)
        assert [s.getsockname() for s in adopted.all_sockets()] == [
            s.getsockname() for s in listeners.all_sockets()
        ]
        assert [s.getsockname() for s in adopted.for_slot(2)] == [s.getsockname() for s in slot2]
        assert adopted.owned_paths == [path]
        adopted.close(unlink=False)
    finally:
        listeners.close()
    assert not os.path.exists(path)


def test_steering_program_picks_among_the_given_indexes() -> None:
    assert steering_program([]) == [(reuseport.BPF_RET_K, 0, 0, reuseport.KERNEL_HASH)]
    identity = steering_program([0, 1, 2])
    assert identity[1] == (reuseport.BPF_ALU_MOD_K, 0, 0, 3) and identity[-1][0] == reuseport.BPF_RET_A
    chain = steering_program([1, 3])
    assert chain[1] == (reuseport.BPF_ALU_MOD_K, 0, 0, 2)
    assert chain[2:] == [
        (reuseport.BPF_JMP_JEQ_K, 0, 1, 0),
        (reuseport.BPF_RET_K, 0, 0, 1),
        (reuseport.BPF_RET_K, 0, 0, 3),
    ]


def _accepted_by_slot(group: PortGroup, connections: int) -> dict[int, int]:
    """Open ``connections`` to the group's port; how many each slot's socket queued."""
    clients = [
        socket.create_connection(group.sockets[0].getsockname(), timeout=5) for _ in range(connections)
    ]
    counts: dict[int, int] = {}
    try:
        for slot, sock in enumerate(group.sockets, 1):
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                counts[slot] = counts.get(slot, 0) + 1
    finally:
        for client in clients:
            client.close()
    return counts


@pytest.mark.skipif(not reuseport.supported(), reason="SO_REUSEPORT groups spread connections on Linux")
def test_a_port_group_gives_each_slot_a_socket_and_steers_new_connections() -> None:
    group = PortGroup.bind("127.0.0.1", 0, 512)
    try:
        port = group.sockets[0].getsockname()[1]
        assert [group.socket_for(k).getsockname()[1] for k in (1, 2, 3)] == [port] * 3
        assert len({s.fileno() for s in group.sockets}) == 3
        with socket.socket() as intruder, pytest.raises(OSError):  # the port stays exclusive
            intruder.bind(("127.0.0.1", port))
        group.steer({2})
        assert _accepted_by_slot(group, 30) == {2: 30}
        group.steer({1, 3})
        assert set(_accepted_by_slot(group, 60)) == {1, 3}
        group.steer(set())  # nobody serving: the kernel's hash
        assert sum(_accepted_by_slot(group, 30).values()) == 30
        # Slots above the count close from the end, once no process serves them.
        group.shrink(1, busy={2})
        assert len(group.sockets) == 2
        group.shrink(1, busy=set())
        assert len(group.sockets) == 1
    finally:
        group.close()


# ----------------------------------------------------------------------------- shared memory


def test_stats_table_is_shared_with_a_forked_child() -> None:
    table = StatsTable(8)
    cell = table.allocate()
    other = table.allocate()
    assert cell != other and table.read(cell).state is WorkerState.BOOTING
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        writer = table.writer(cell)
        writer.beat(requests=42, connections=3)
        writer.ready()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    snap = table.read(cell)
    assert (snap.state, snap.requests, snap.connections) == (WorkerState.READY, 42, 3)
    assert abs(snap.heartbeat - time.monotonic()) < 5 and snap.ready_at > 0
    assert table.read(other).requests == 0  # cells do not overlap
    table.release(cell)
    assert table.read(cell).state is WorkerState.FREE
    assert table.allocate() == cell  # reused
    table.close()


def test_stats_table_full_raises() -> None:
    table = StatsTable(1)
    table.allocate()
    with pytest.raises(RuntimeError):
        table.allocate()


# ----------------------------------------------------------------------------- worker config


def test_child_config_leaves_recycling_to_the_master() -> None:
    config = resolve("start", {"app": "m:app", "limit_max_requests": "10", "workers": "3"}, environ={})
    assert config.limit_max_requests == 10 and config.workers == 3
    child = child_config(config)
    assert child.limit_max_requests is None and child.app == "m:app" and child.workers == 3


def test_child_config_uses_the_preloaded_app() -> None:
    async def app(scope: object, receive: object, send: object) -> None: ...

    config = resolve("start", {"app": "m:factory", "factory": True}, environ={})
    child = child_config(config, preloaded=app)
    assert child.app is app and child.factory is False


def test_supervisor_options_exist_only_for_start() -> None:
    config = resolve(
        "start",
        {"app": "m:app"},
        environ={"WEB_CONCURRENCY": "5", "ASGICTL_TIMEOUT": "7", "ASGICTL_MAX_REQUESTS_JITTER": "3"},
    )
    assert (config.workers, config.timeout, config.max_requests_jitter) == (5, 7.0, 3)
    serve = resolve("serve", {"app": "m:app"}, environ={"WEB_CONCURRENCY": "5"})
    assert serve.workers == 1  # serve has no --workers


# ----------------------------------------------------------------------------- pid file


def test_pid_file_is_written_atomically_and_removed_only_if_ours(tmp_path: Path) -> None:
    path = tmp_path / "run" / "a.pid"
    path.parent.mkdir()
    pid_file = PidFile(str(path))
    pid_file.write()
    assert path.read_text() == f"{os.getpid()}\n"
    assert [p.name for p in path.parent.iterdir()] == ["a.pid"]  # no temporary left
    path.write_text("1\n")  # another master (after a USR2 upgrade) owns it now
    pid_file.remove()
    assert path.exists()
    pid_file.write()
    pid_file.remove()
    assert not path.exists()
    pid_file.remove()  # already gone: no error


def test_pid_file_not_written_by_us_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "a.pid"
    path.write_text(f"{os.getpid()}\n")  # our pid, but another process wrote it
    PidFile(str(path)).remove()
    assert path.exists()
    # Ours, then replaced by another file that happens to hold the same pid: not ours.
    pid_file = PidFile(str(path))
    pid_file.write()
    replacement = tmp_path / "other"
    replacement.write_text(f"{os.getpid()}\n")
    os.replace(replacement, path)
    pid_file.remove()
    assert path.exists()


@pytest.fixture
def fake_master() -> Iterator[subprocess.Popen[bytes]]:
    """A live process titled like a master ("asgictl: master ..."), ended by PID."""
    code = (
        "import setproctitle, sys, time\n"
        "setproctitle.setproctitle('asgictl: master fake:app')\n"
        "print('titled', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"titled\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def test_pid_file_check_refuses_a_running_master_only(
    tmp_path: Path, fake_master: subprocess.Popen[bytes]
) -> None:
    path = tmp_path / "a.pid"
    pid_file = PidFile(str(path))
    pid_file.check()  # no file: fine
    path.write_text(f"{fake_master.pid}\n")
    assert running_master(fake_master.pid)
    with pytest.raises(ConfigError, match=rf"names a running master \(pid {fake_master.pid}\)"):
        pid_file.check()
    pid_file.check(predecessor=fake_master.pid)  # USR2: the master that re-executed us
    assert path.read_text() == f"{fake_master.pid}\n"  # a check writes nothing
    # A live process that is not a master (a reused pid), and a dead one: stale files.
    path.write_text(f"{os.getpid()}\n")
    pid_file.check()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not running_master(sleeper.pid)
        path.write_text(f"{sleeper.pid}\n")
        pid_file.check()
    finally:
        sleeper.kill()
        sleeper.wait(10)
    fake_master.kill()
    fake_master.wait(10)
    path.write_text(f"{fake_master.pid}\n")
    assert not running_master(fake_master.pid)
    pid_file.check()
    path.write_text("garbage\n")
    pid_file.check()
