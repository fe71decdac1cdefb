"""The control protocol, defined once: its version, its commands, where sockets live.

Both ends read this module: the client (``asgictl status|reload|scale|stop``, in
``control/client.py``) and the master's side (``supervisor/control.py``). It imports only
the standard library, so a control command loads nothing of the server.

Wire format (version 1): line-delimited JSON, UTF-8, one object per line each way, over
a Unix stream socket.

* request: ``{"v": 1, "cmd": CMD, ...arguments, "id": any}``; ``id`` is optional and
  echoed in every line answering the request. CMD and its arguments are :data:`COMMANDS`.
* reply: ``{"v": 1, "ok": true, ...}`` or ``{"v": 1, "ok": false, "error": TEXT}``.
  A command that acts (:attr:`Command.acts`) is answered once the action is finished,
  and sends ``{"v": 1, "event": "progress", ...}`` lines meanwhile, at least every
  :data:`PROGRESS_SECONDS`. Requests on one connection are answered in order.
* anything else (not JSON, not an object, another version, an unknown command or
  argument, an argument of the wrong type) is refused with ``ok: false`` and a one-line
  error; the connection stays usable. A line longer than :data:`MAX_LINE`, or a partial
  line older than :data:`LINE_DEADLINE`, closes the connection.

Where sockets live (:func:`master_socket_path`): ``--control-socket PATH`` if given, else
next to ``--pid-file`` (``app.pid`` -> ``app.ctl``), else ``<runtime>/<pid>.ctl`` where
``<runtime>`` (:func:`runtime_dir`) is ``$XDG_RUNTIME_DIR/asgictl`` or, without one,
``/tmp/asgictl-<uid>``, a directory private to the user (mode 0700). In the first two
cases ``<runtime>/<pid>.ctl`` is a symbolic link to the socket, so the runtime directory
lists every master of the user by pid (:func:`registry`), wherever its socket is.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1

#: Longest request line, newline excluded.
MAX_LINE = 64 * 1024
#: A request line must be complete within this long of its first byte (seconds).
LINE_DEADLINE = 10.0
#: Commands that act report progress at least this often (seconds): the client's
#: sign of life while it waits.
PROGRESS_SECONDS = 1.0
#: ``sun_path`` holds 108 bytes on Linux, the terminating NUL included.
MAX_PATH = 107

#: The file name of a master's entry in the runtime directory: ``<pid>.ctl``.
SUFFIX = ".ctl"


class ProtocolError(ValueError):
    """A line the protocol refuses; the message is the reply's ``error``."""


@dataclass(frozen=True)
class Command:
    """One command: its name and its optional arguments by JSON type."""

    name: str
    #: argument name -> its type (``int`` or ``bool``); every argument is optional
    arguments: Mapping[str, type] = field(default_factory=dict)
    #: answered once the action is finished, with progress events meanwhile
    acts: bool = False


#: Every command, by name. A new command is one entry here and one handler in
#: ``supervisor/control.py`` (a test checks that the two lists agree).
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("hello"),  # who answers: server, version, pid, app, directory
        Command("status"),  # the master and each worker: states, counters, samples
        Command("reload", acts=True),  # a rolling restart of every worker
        Command("scale", {"count": int, "delta": int}, acts=True),  # exactly one of them
        Command("stop", {"fast": bool}, acts=True),  # fast: no grace for requests
    )
}


def _type_error(cmd: str, name: str, kind: type) -> str:
    return f"{cmd}: {name} is {'true or false' if kind is bool else 'an integer'}"


def _is(value: Any, kind: type) -> bool:
    # JSON true is a Python int too: an integer argument refuses it.
    return isinstance(value, bool) if kind is bool else isinstance(value, int) and not isinstance(value, bool)


def request(cmd: str, **arguments: Any) -> dict[str, Any]:
    """The request object for ``cmd``; ProtocolError for an argument it does not take."""
    check_request({"v": PROTOCOL_VERSION, "cmd": cmd, **arguments})
    return {"v": PROTOCOL_VERSION, "cmd": cmd, **arguments}


def encode(message: Mapping[str, Any]) -> bytes:
    """One line of the protocol: compact JSON and a newline."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """A received line (without its newline) as an object; ProtocolError if it is not one."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("not a JSON object (one per line)") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object (one per line)")
    return message


def check_request(message: Mapping[str, Any]) -> tuple[Command, dict[str, Any]]:
    """The command a request names and its arguments, checked against :data:`COMMANDS`.

    Raises ProtocolError for another version, an unknown command, an unknown argument or
    an argument of the wrong type.
    """
    version = message.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version!r}; this master speaks {PROTOCOL_VERSION}"
        )
    name = message.get("cmd")
    command = COMMANDS.get(name) if isinstance(name, str) else None
    if command is None:
        raise ProtocolError(f"unknown command {name!r}; expected one of {', '.join(COMMANDS)}")
    arguments = {k: v for k, v in message.items() if k not in ("v", "cmd", "id")}
    unknown = sorted(set(arguments) - set(command.arguments))
    if unknown:
        noun = "argument" if len(unknown) == 1 else "arguments"
        raise ProtocolError(f"{name}: unknown {noun} {', '.join(unknown)}")
    for key, value in arguments.items():
        kind = command.arguments[key]
        if not _is(value, kind):
            raise ProtocolError(_type_error(name, key, kind))
    return command, arguments


# ------------------------------------------------------------------------------ paths


def runtime_dir(environ: Mapping[str, str] | None = None) -> str:
    """The user's directory of control sockets: ``$XDG_RUNTIME_DIR/asgictl``, or without
    a usable ``XDG_RUNTIME_DIR`` (unset, relative, missing), ``/tmp/asgictl-<uid>``."""
    environ = os.environ if environ is None else environ
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and os.path.isdir(runtime):
        return os.path.join(runtime, "asgictl")
    return os.path.join(tempfile.gettempdir(), f"asgictl-{os.getuid()}")


def registry_path(pid: int, directory: str) -> str:
    """The entry of master ``pid`` in the runtime ``directory``."""
    return os.path.join(directory, f"{pid}{SUFFIX}")


def pid_file_socket(pid_file: str) -> str:
    """The socket beside a pid file: ``app.pid`` -> ``app.ctl``."""
    stem = pid_file[:-4] if pid_file.endswith(".pid") else pid_file
    return os.path.abspath(stem + SUFFIX)


def master_socket_path(
    pid: int, control_socket: str | None, pid_file: str | None, environ: Mapping[str, str] | None = None
) -> str:
    """Where master ``pid`` listens (absolute): see the module's docstring."""
    if control_socket:
        return os.path.abspath(control_socket)
    if pid_file:
        return pid_file_socket(pid_file)
    return registry_path(pid, runtime_dir(environ))


def private_dir_problem(directory: str) -> str | None:
    """Why ``directory`` cannot hold our sockets (not a directory, another user's, open
    to others), or None. Another user who could write there could swap our sockets."""
    try:
        info = os.lstat(directory)
    except OSError as exc:
        return f"{directory}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if info.st_uid != os.getuid():
        return f"{directory} belongs to another user"
    if info.st_mode & 0o077:
        return f"{directory} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}, expected 0700)"
    return None


def registry(directory: str) -> list[tuple[int, str]]:
    """The entries of the runtime ``directory``: (master pid, path), by pid.

    Empty if the directory does not exist or is not private to the user.
    """
    if private_dir_problem(directory) is not None:
        return []
    entries = []
    for name in os.listdir(directory):
        stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else ""
        if stem.isdigit() and stem.isascii():
            entries.append((int(stem), os.path.join(directory, name)))
    return sorted(entries)


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (of any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_entry(path: str) -> None:
    """Remove a runtime-directory entry (a socket or a link; nothing else is ours)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode) or os.path.islink(path):
            os.unlink(path)


def live_entries(directory: str) -> list[tuple[int, str]]:
    """:func:`registry` without the entries of processes that are gone, which are removed
    on the way (a master killed with SIGKILL leaves its socket behind)."""
    entries = []
    for pid, path in registry(directory):
        if process_exists(pid):
            entries.append((pid, path))
        else:
            remove_entry(path)
    return entries
