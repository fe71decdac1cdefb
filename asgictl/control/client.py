"""The client's side of the control socket: one connection, and finding the masters.

:class:`Client` is one connection to a master: it sends requests built by
``protocol.py`` and reads the replies, passing progress events to a callback.
:func:`locate` finds the masters a command is about: the one at ``--control-socket``,
the one whose pid ``--pid-file`` holds, or every master in the user's runtime directory
(:func:`discover`), narrowed by a selection (an app name or a master pid). Discovery
removes the entries of masters that are gone, so they are never reported.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from asgictl.control.protocol import (
    ProtocolError,
    decode,
    encode,
    live_entries,
    pid_file_socket,
    private_dir_problem,
    registry_path,
    remove_entry,
    request,
    runtime_dir,
)

#: No line from the master for this long (acting commands send progress every second).
READ_TIMEOUT = 60.0
#: How long discovery waits for each master's ``hello``.
PROBE_TIMEOUT = 5.0
#: An entry nobody listens on, of a live pid, younger than this may be a master between
#: bind() and listen(): it is left alone. Older, its pid belongs to another process now.
STALE_AFTER = 5.0


class ControlError(Exception):
    """A one-line failure for the user; ``code`` is the exit status (1 failed, 2 usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class NotListening(ControlError):
    """Nobody listens at the path (no file, or the connection is refused)."""


class Client:
    """One connection to a master's control socket; ControlError on any failure."""

    def __init__(self, path: str, timeout: float = READ_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise NotListening(f"no asgictl server is running (no master listening at {path})") from None
        except PermissionError:
            self.sock.close()
            raise ControlError(
                f"cannot connect to {path}: permission denied (a server of another user?)"
            ) from None
        except OSError as exc:
            self.sock.close()
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self) -> bytes | None:
        """The next line from the master, None once it has closed the connection."""
        while b"\n" not in self._buffer:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"the master did not answer within {self.timeout:.0f} s") from None
            except OSError as exc:
                raise ControlError(f"control connection failed: {exc.strerror or exc}") from None
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def request(
        self, cmd: str, progress: Callable[[dict[str, Any]], None] | None = None, **arguments: Any
    ) -> dict[str, Any] | None:
        """Send one request; return its final reply (None: the master closed the connection).

        Progress events on the way go to ``progress``.
        """
        try:
            self.sock.sendall(encode(request(cmd, **arguments)))
        except OSError as exc:
            raise ControlError(f"control connection failed: {exc.strerror or exc}") from None
        while True:
            raw = self.line()
            if raw is None:
                return None
            try:
                message = decode(raw)
            except ProtocolError:
                raise ControlError(f"the master sent something that is not JSON: {raw[:80]!r}") from None
            if message.get("event") == "progress":
                if progress is not None:
                    progress(message)
                continue
            return message


def check(reply: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """A successful reply, else ControlError with the master's reason."""
    if reply is None:
        raise ControlError(f"{what}: the master closed the connection without answering")
    if not reply.get("ok"):
        raise ControlError(f"{what}: {reply.get('error', 'failed')}")
    return reply


# --------------------------------------------------------------------------- discovery


@dataclass
class Running:
    """A master that answered ``hello`` at ``path``."""

    path: str
    pid: int
    hello: dict[str, Any] = field(default_factory=dict)

    @property
    def app(self) -> str:
        return str(self.hello.get("app", "?"))

    def matches(self, selection: str) -> bool:
        """Selected by its master pid, its app (``main:app``) or the app's module (``main``)."""
        return selection in (str(self.pid), self.app, self.app.partition(":")[0])

    def describe(self) -> str:
        directory = self.hello.get("directory")
        return f"{self.pid} ({self.app}{f' in {directory}' if directory else ''})"


def hello(path: str, timeout: float = PROBE_TIMEOUT) -> Running:
    """Ask the master at ``path`` who it is; NotListening or ControlError."""
    with Client(path, timeout) as client:
        reply = check(client.request("hello"), "hello")
    return Running(path, int(reply["pid"]), reply)


def discover(directory: str) -> list[Running]:
    """Every master with an entry in the runtime ``directory``, by pid.

    The entries of masters that are gone are removed on the way: a pid that no longer
    exists, or a socket nobody has listened on for :data:`STALE_AFTER` seconds.
    """
    found = []
    for pid, path in live_entries(directory):
        try:
            running = hello(path)
        except NotListening:
            with contextlib.suppress(OSError):
                if time.time() - os.lstat(path).st_mtime > STALE_AFTER:
                    remove_entry(path)
            continue
        except ControlError:
            # Alive but not answering (its loop is busy): still a running master.
            running = Running(path, pid)
        if running.pid == pid:
            # Else the entry points at a socket another master took over (a USR2
            # upgrade): that master has an entry of its own.
            found.append(running)
    return found


def _read_pid(pid_file: str) -> int:
    try:
        with open(pid_file, encoding="ascii") as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        raise ControlError(f"no asgictl server is running (no pid file {pid_file})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ControlError(f"cannot read the pid file {pid_file}: {exc}") from None
    if not text.isdigit():
        raise ControlError(f"the pid file {pid_file} holds no pid: {text[:40]!r}")
    return int(text)


def locate(
    control_socket: str | None,
    pid_file: str | None,
    selection: str | None,
    environ: Mapping[str, str] | None = None,
) -> list[Running]:
    """The masters a command is about, at least one (else ControlError, exit 1).

    ``--control-socket`` names one socket; ``--pid-file`` one master (its entry in the
    runtime directory, else the socket beside the pid file); neither: every master in
    the runtime directory. ``selection`` (an app name or a master pid) narrows them.
    """
    directory = runtime_dir(environ)
    if control_socket:
        found = [hello(os.path.abspath(control_socket))]
    elif pid_file:
        pid = _read_pid(pid_file)
        entry = registry_path(pid, directory)
        trusted = private_dir_problem(directory) is None and os.path.lexists(entry)
        path = entry if trusted else pid_file_socket(pid_file)
        found = [hello(path)]
        if found[0].pid != pid:
            raise ControlError(f"the master at {path} is {found[0].pid}, not {pid} as {pid_file} says")
    else:
        found = discover(directory)
        if not found:
            raise ControlError(f"no asgictl server is running (none in {directory})")
    if selection is None:
        return found
    chosen = [m for m in found if m.matches(selection)]
    if not chosen:
        running = ", ".join(m.describe() for m in found)
        raise ControlError(f"no running master matches {selection!r} (running: {running})")
    return chosen


def only_one(found: list[Running], command: str) -> Running:
    """The one master an acting command may address; several: ControlError naming them."""
    if len(found) == 1:
        return found[0]
    candidates = ", ".join(m.describe() for m in found)
    raise ControlError(
        f"{command}: {len(found)} masters are running; choose one by app or master pid"
        f" (asgictl {command} PID): {candidates}",
        code=2,
    )
