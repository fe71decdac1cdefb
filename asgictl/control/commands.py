"""``asgictl status|reload|scale|stop``: find the masters, send one request, print.

Each command locates the masters it is about (``client.locate``: ``--control-socket``,
``--pid-file``, else every master of the user, narrowed by an app name or master pid),
sends its request, shows progress while an acting command waits, and prints the result:
text for people or JSON (``--json``) for programs. ``status`` shows one master in detail
and several one line each; ``reload``, ``scale`` and ``stop`` address exactly one and
refuse, naming the candidates, when the selection leaves several.

Exit status: 0 done, 1 not running or failed, 2 bad usage (several masters included).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from asgictl.config import ConfigError, resolve
from asgictl.control.client import Client, ControlError, Running, check, locate, only_one
from asgictl.control.render import Progress, format_list, format_status

#: How often ``status --watch`` refreshes (seconds).
WATCH_SECONDS = 1.0


def _strip(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("v", "ok")}


def _dump(value: Any, compact: bool = False) -> str:
    return json.dumps(value, separators=(",", ":")) if compact else json.dumps(value, indent=2)


def _watch(draw: Callable[[], str | None], out: TextIO, as_json: bool) -> int:
    """Print ``draw()`` every WATCH_SECONDS until it returns None (exit 1) or Ctrl-C.

    On a terminal the view is redrawn in place; elsewhere each refresh follows the last
    (JSON: one line each).
    """
    redraw = out.isatty() and not as_json
    try:
        while True:
            text = draw()
            if text is None:
                return 1
            if redraw:  # home, draw over, clear what is left: no flicker, like top
                out.write("\033[H" + text.replace("\n", "\033[K\n") + "\033[K\n\033[J")
            else:
                out.write(text + ("\n" if as_json else "\n\n"))
            out.flush()
            time.sleep(WATCH_SECONDS)
    except KeyboardInterrupt:
        return 0


def cmd_status(
    found: list[Running], as_json: bool, watch: bool, out: TextIO, find: Callable[[], list[Running]]
) -> int:
    """One master: the detailed view (``--watch``: until it stops). Several: one line
    each (``--watch``: the masters found again by ``find`` on every refresh)."""
    if len(found) > 1:
        return _status_list(found, as_json, watch, out, find)
    with Client(found[0].path) as client:
        if not watch:
            reply = _strip(check(client.request("status"), "status"))
            out.write((_dump(reply) if as_json else format_status(reply)) + "\n")
            return 0

        def draw() -> str | None:
            reply = client.request("status")
            if reply is None:
                out.write("asgictl: the server stopped\n")
                return None
            reply = _strip(check(reply, "status"))
            return _dump(reply, compact=True) if as_json else format_status(reply)

        return _watch(draw, out, as_json)


def _statuses(found: list[Running]) -> list[dict[str, Any]]:
    """The status of each master; one that stopped since it was found is left out."""
    statuses = []
    for running in found:
        try:
            with Client(running.path) as client:
                statuses.append(_strip(check(client.request("status"), "status")))
        except ControlError:
            continue
    return statuses


def _status_list(
    found: list[Running], as_json: bool, watch: bool, out: TextIO, find: Callable[[], list[Running]]
) -> int:
    first = True

    def draw() -> str:
        nonlocal found, first
        if not first:
            try:
                found = find()
            except ControlError:  # none left: an empty list, until some start again
                found = []
        first = False
        statuses = _statuses(found)
        return _dump(statuses, compact=watch) if as_json else format_list(statuses)

    if not watch:
        out.write(draw() + "\n")
        return 0
    return _watch(draw, out, as_json)


def cmd_reload(target: Running, as_json: bool, out: TextIO, err: TextIO) -> int:
    bar = Progress(err, enabled=not as_json)

    def progress(p: dict[str, Any]) -> None:
        booting = p.get("booting")
        now = f" · booting worker {booting['id']} (pid {booting['pid']})" if booting else ""
        text = f"Reloading: {p['done']}/{p['total']} workers replaced{now} · {p['elapsed']:.1f}s"
        bar.show(text, str(p["done"]))

    with Client(target.path) as client:
        reply = client.request("reload", progress)
    bar.done()
    reply = check(reply, "reload")
    if as_json:
        out.write(_dump(_strip(reply)) + "\n")
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


def cmd_scale(target: Running, arguments: dict[str, int], as_json: bool, out: TextIO, err: TextIO) -> int:
    bar = Progress(err, enabled=not as_json)

    def progress(p: dict[str, Any]) -> None:
        draining = f", {p['draining']} draining" if p.get("draining") else ""
        text = f"Scaling to {p['to']}: {p['ready']} ready{draining} · {p['elapsed']:.1f}s"
        bar.show(text, f"{p['ready']}/{draining}")

    with Client(target.path) as client:
        reply = client.request("scale", progress, **arguments)
    bar.done()
    reply = check(reply, "scale")
    if as_json:
        out.write(_dump(_strip(reply)) + "\n")
    else:
        out.write(
            f"Scaled from {reply['from']} to {reply['to']} workers: {reply['ready']} ready"
            f" ({reply['elapsed']:.2f} s)\n"
        )
    return 0


def cmd_stop(target: Running, fast: bool, as_json: bool, out: TextIO, err: TextIO) -> int:
    bar = Progress(err, enabled=not as_json)

    def progress(p: dict[str, Any]) -> None:
        # Not logs.plural: the control client loads config and this package only.
        left = f"{p['workers']} worker{'' if p['workers'] == 1 else 's'}"
        text = f"Stopping{' (fast)' if fast else ''}: {left} left · {p['elapsed']:.1f}s"
        bar.show(text, str(p["workers"]))

    started = time.monotonic()
    with Client(target.path) as client:
        reply = client.request("stop", progress, fast=fast)
        if reply is not None and reply.get("ok"):
            # The reply leaves in the master's last pass; its exit closes the connection.
            while client.line() is not None:
                pass
    bar.done()
    if reply is None:  # the master went away without answering: it is gone all the same
        reply = {
            "ok": True,
            "pid": target.pid,
            "exit_code": None,
            "elapsed": round(time.monotonic() - started, 3),
        }
    reply = check(reply, "stop")
    if as_json:
        out.write(_dump(_strip(reply)) + "\n")
    else:
        code = reply.get("exit_code")
        out.write(
            f"Stopped master {reply['pid']}{' (fast)' if fast else ''} in {reply['elapsed']:.2f} s"
            + (f", exit status {code}" if code is not None else "")
            + "\n"
        )
    return 0


def main(command: str, values: dict[str, Any], **options: Any) -> int:
    """Run one control command; returns the exit status (errors print one line).

    ``values`` are the table's options as given on the command line (``--pid-file``,
    ``--control-socket``); ``options`` the command's own: ``master`` (a selection: app
    name or master pid), ``json``, ``watch`` (status), ``fast`` (stop), ``words``
    (scale: ``[MASTER] N|+K|-K``).
    """
    out, err = sys.stdout, sys.stderr
    try:
        config = resolve(command, values)
        as_json = bool(options.get("json"))
        selection = options.get("master")
        arguments: dict[str, int] = {}
        if command == "scale":  # [MASTER] N|+K|-K
            words = list(options.get("words") or ())
            if len(words) not in (1, 2):
                raise ControlError("scale: give [MASTER] N|+K|-K", code=2)
            selection = words[0] if len(words) == 2 else None
            arguments = parse_scale(words[-1])

        def find() -> list[Running]:
            return locate(config.control_socket, config.pid_file, selection)

        found = find()
        if command == "status":
            return cmd_status(found, as_json, bool(options.get("watch")), out, find)
        target = only_one(found, command)
        if command == "reload":
            return cmd_reload(target, as_json, out, err)
        if command == "scale":
            return cmd_scale(target, arguments, as_json, out, err)
        if command == "stop":
            return cmd_stop(target, bool(options.get("fast")), as_json, out, err)
        raise ControlError(f"unknown command {command}", code=2)
    except ConfigError as exc:
        print(f"asgictl: error: {exc}", file=err)
        return 2
    except ControlError as exc:
        print(f"asgictl: {exc}", file=err)
        return exc.code
    except KeyboardInterrupt:
        return 130
