"""The client side of the control socket: ``asgictl status|reload|scale|stop``.

Each command connects to the master's control socket (found as the master finds it:
``--control-socket``, else next to ``--pid-file``, else the default directory; see
:func:`asgictl.supervisor.control.default_socket_path`), sends one request of protocol
version 1 (documented in ``supervisor/control.py`` and the README), waits for the
answer while showing progress, and prints the result, as a table or text for people
or as JSON (``--json``) for programs. Exit status: 0 done, 1 not running or failed,
2 bad usage.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from asgictl.config import ConfigError, resolve
from asgictl.supervisor.control import PROTOCOL_VERSION, default_socket_path

#: No line from the master for this long (it sends progress every second): give up.
READ_TIMEOUT = 60.0
#: How often ``status --watch`` refreshes.
WATCH_SECONDS = 1.0


class ControlError(Exception):
    """A one-line failure for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Client:
    """One connection to a master's control socket."""

    def __init__(self, path: str, timeout: float = READ_TIMEOUT) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise ControlError(f"no asgictl server is running (no master listening at {path})") from None
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

    def _line(self) -> bytes | None:
        while b"\n" not in self._buffer:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"the master did not answer within {READ_TIMEOUT:.0f} s") from None
            except OSError as exc:
                raise ControlError(f"control connection failed: {exc.strerror or exc}") from None
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def request(
        self, cmd: str, progress: Callable[[dict[str, Any]], None] | None = None, **args: Any
    ) -> dict[str, Any] | None:
        """Send one request; return its final reply (None: the master closed the connection)."""
        line = json.dumps({"v": PROTOCOL_VERSION, "cmd": cmd, **args}).encode() + b"\n"
        try:
            self.sock.sendall(line)
        except OSError as exc:
            raise ControlError(f"control connection failed: {exc.strerror or exc}") from None
        while True:
            raw = self._line()
            if raw is None:
                return None
            try:
                message = json.loads(raw)
            except ValueError:
                raise ControlError(f"the master sent something that is not JSON: {raw[:80]!r}") from None
            if message.get("event") == "progress":
                if progress is not None:
                    progress(message)
                continue
            return message


# ----------------------------------------------------------------------------- output


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024  # type: ignore[assignment]
    return "-"  # pragma: no cover


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


COLUMNS = ("WORKER", "PID", "STATE", "AGE", "REQUESTS", "CONNS", "REQ/S", "RSS", "CPU%", "RESTARTS", "LAST")


def format_status(status: dict[str, Any]) -> str:
    """The ``asgictl status`` table: a header line, then the master and each worker."""
    m = status["master"]
    workers = status["workers"]
    ready = sum(1 for w in workers if w["state"] == "ready")
    header = (
        f"asgictl {m['version']} · {m['app']} · master {m['pid']} {m['state']} · "
        f"{ready}/{m['target']} workers ready · generation {m['generation']} · up {_duration(m['age'])}"
    )
    where = "  ".join([*m.get("listeners", []), *([f"metrics {m['metrics']}"] if m.get("metrics") else [])])
    rows = [
        (
            "master",
            str(m["pid"]),
            m["state"],
            _duration(m["age"]),
            str(m["requests"]),
            str(m["connections"]),
            _num(m["requests_per_second"]),
            _bytes(m["rss"]),
            _num(m["cpu_percent"]),
            "",
            "",
        )
    ]
    for w in workers:
        rows.append(
            (
                str(w["id"]),
                str(w["pid"]),
                w["state"],
                _duration(w["age"]),
                str(w["requests"]),
                str(w["connections"]),
                _num(w["requests_per_second"]),
                _bytes(w["rss"]),
                _num(w["cpu_percent"]),
                str(w["restarts"]),
                w["last_reason"] or "-",
            )
        )
    widths = [max(len(col), *(len(r[i]) for r in rows)) for i, col in enumerate(COLUMNS)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(widths[i]) if i in (0, 2, 10) else c.rjust(widths[i]) for i, c in enumerate(cells)
        )

    lines = [header]
    if where:
        lines.append(where)
    lines += ["", fmt(COLUMNS).rstrip(), *(fmt(r).rstrip() for r in rows)]
    return "\n".join(lines)


def _strip(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("v", "ok")}


def _check(reply: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if reply is None:
        raise ControlError(f"{what}: the master closed the connection without answering")
    if not reply.get("ok"):
        raise ControlError(f"{what}: {reply.get('error', 'failed')}")
    return reply


class Progress:
    """One line rewritten in place on a terminal (stderr), else a new line per change."""

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.last = ""

    def show(self, text: str, key: str | None = None) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif (key or text) != self.last:
            self.stream.write(text + "\n")
            self.stream.flush()
        self.last = key or text

    def done(self) -> None:
        if self.enabled and self.tty and self.last:
            self.stream.write("\r\033[K")
            self.stream.flush()


# ---------------------------------------------------------------------------- commands


def socket_path(command: str, values: dict[str, Any]) -> str:
    config = resolve(command, values)
    return os.path.abspath(config.control_socket or default_socket_path(config.pid_file))


def cmd_status(path: str, as_json: bool, watch: bool, out: TextIO) -> int:
    with Client(path) as client:
        if not watch:
            reply = _check(client.request("status"), "status")
            out.write(json.dumps(_strip(reply), indent=2) + "\n" if as_json else format_status(reply) + "\n")
            return 0
        clear = out.isatty() and not as_json
        try:
            while True:
                reply = client.request("status")
                if reply is None:
                    out.write("asgictl: the server stopped\n")
                    return 1
                reply = _check(reply, "status")
                if as_json:  # one object per line per refresh
                    out.write(json.dumps(_strip(reply), separators=(",", ":")) + "\n")
                else:
                    text = format_status(reply)
                    if clear:  # home, draw over, clear what is left: no flicker, like top
                        out.write("\033[H" + text.replace("\n", "\033[K\n") + "\033[K\n\033[J")
                    else:
                        out.write(text + "\n\n")
                out.flush()
                time.sleep(WATCH_SECONDS)
        except KeyboardInterrupt:
            return 0


def cmd_reload(path: str, as_json: bool, out: TextIO, err: TextIO) -> int:
    bar = Progress(err, enabled=not as_json)

    def progress(p: dict[str, Any]) -> None:
        booting = p.get("booting")
        now = f" · booting worker {booting['id']} (pid {booting['pid']})" if booting else ""
        text = f"Reloading: {p['done']}/{p['total']} workers replaced{now} · {p['elapsed']:.1f}s"
        bar.show(text, str(p["done"]))

    with Client(path) as client:
        reply = client.request("reload", progress)
    bar.done()
    reply = _check(reply, "reload")
    if as_json:
        out.write(json.dumps(_strip(reply), indent=2) + "\n")
    else:
        pids = " ".join(f"{w['id']}:{w['pid']}" for w in reply["workers"])
        out.write(
            f"Reloaded {reply['reloaded']}/{reply['total']} workers in {reply['elapsed']:.2f} s"
            f" (generation {reply['generation']}); workers now {pids}\n"
        )
    return 0


def parse_scale(spec: str) -> dict[str, int]:
    """``N`` (a count), ``+K`` or ``-K`` (a change) -> the request's argument."""
    text = spec.strip()
    try:
        value = int(text)
    except ValueError:
        raise ControlError(f"scale: {spec!r} is not N, +K or -K", code=2) from None
    if text[:1] in "+-":
        return {"delta": value}
    if value < 1:
        raise ControlError("scale: at least 1 worker is needed", code=2)
    return {"count": value}


def cmd_scale(path: str, spec: str, as_json: bool, out: TextIO, err: TextIO) -> int:
    args = parse_scale(spec)
    bar = Progress(err, enabled=not as_json)

    def progress(p: dict[str, Any]) -> None:
        draining = f", {p['draining']} draining" if p.get("draining") else ""
        text = f"Scaling to {p['to']}: {p['ready']} ready{draining} · {p['elapsed']:.1f}s"
        bar.show(text, f"{p['ready']}/{draining}")

    with Client(path) as client:
        reply = client.request("scale", progress, **args)
    bar.done()
    reply = _check(reply, "scale")
    if as_json:
        out.write(json.dumps(_strip(reply), indent=2) + "\n")
    else:
        out.write(
            f"Scaled from {reply['from']} to {reply['to']} workers: {reply['ready']} ready"
            f" ({reply['elapsed']:.2f} s)\n"
        )
    return 0


def cmd_stop(path: str, fast: bool, as_json: bool, out: TextIO, err: TextIO) -> int:
    bar = Progress(err, enabled=not as_json)

    def progress(p: dict[str, Any]) -> None:
        text = f"Stopping{' (fast)' if fast else ''}: {p['workers']} worker(s) left · {p['elapsed']:.1f}s"
        bar.show(text, str(p["workers"]))

    started = time.monotonic()
    with Client(path) as client:
        pid = _check(client.request("hello"), "stop")["pid"]
        reply = client.request("stop", progress, fast=fast)
        if reply is not None and reply.get("ok"):
            # The reply leaves in the master's last pass; its exit closes the connection.
            while client._line() is not None:
                pass
    bar.done()
    if reply is None:  # the master went away without answering: it is gone all the same
        reply = {"ok": True, "pid": pid, "exit_code": None, "elapsed": round(time.monotonic() - started, 3)}
    reply = _check(reply, "stop")
    if as_json:
        out.write(json.dumps(_strip(reply), indent=2) + "\n")
    else:
        code = reply.get("exit_code")
        out.write(
            f"Stopped master {reply['pid']}{' (fast)' if fast else ''} in {reply['elapsed']:.2f} s"
            + (f", exit status {code}" if code is not None else "")
            + "\n"
        )
    return 0


def main(command: str, values: dict[str, Any], **options: Any) -> int:
    """Run one control command; returns the exit status (errors print one line)."""
    out, err = sys.stdout, sys.stderr
    try:
        path = socket_path(command, values)
        as_json = bool(options.get("json"))
        if command == "status":
            return cmd_status(path, as_json, bool(options.get("watch")), out)
        if command == "reload":
            return cmd_reload(path, as_json, out, err)
        if command == "scale":
            return cmd_scale(path, str(options.get("count")), as_json, out, err)
        if command == "stop":
            return cmd_stop(path, bool(options.get("fast")), as_json, out, err)
        raise ControlError(f"unknown command {command}", code=2)
    except ConfigError as exc:
        print(f"asgictl: error: {exc}", file=err)
        return 2
    except ControlError as exc:
        print(f"asgictl: {exc}", file=err)
        return exc.code
    except KeyboardInterrupt:
        return 130
