"""Every command's --help, as a person reads it: run ``python -m asgictl CMD --help`` for
each command and check that every option of the table shows its type or choices (INTEGER,
FLOAT, PATH, [a|b]...), never a bare or made-up one, with the help meant for that command."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import support

from asgictl.cli import _COMMANDS
from asgictl.config import BY_NAME, CONTROL_COMMANDS, START, options_for, to_float, to_int

#: The commands and the table's options each one takes (dev takes start's).
COMMANDS = {name: options_for(START if name == "dev" else name) for name in _COMMANDS}


def help_text(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "asgictl", *args, "--help"],
        env=support.test_env(COLUMNS="250"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_command_is_walked() -> None:
    assert set(COMMANDS) == {"serve", "start", "dev", "status", "reload", "scale", "stop"}
    top = help_text()
    for name in COMMANDS:
        assert re.search(rf"(?m)^\s+{name}\s+\S", top), f"{name} missing from asgictl --help"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_shows_its_type(command: str) -> None:
    text = help_text(command)
    assert "<str>" not in text and "<int>" not in text
    for opt in COMMANDS[command]:
        names = ", ".join([opt.cli_name, *opt.aliases])
        if opt.flag:
            assert re.search(rf"(?m)^\s+{re.escape(opt.cli_name)} / --no-{opt.cli_name[2:]}\s", text), (
                opt.name
            )
            continue
        match = re.search(rf"(?m)^\s+{re.escape(names)} (\S+)\s", text)
        assert match, f"{command} --help: no line for {names}"
        shown = match.group(1)
        assert shown == opt.value_name, (opt.name, shown)
        base = getattr(opt.convert, "metavar", None)
        if opt.choices:
            assert shown == "[" + "|".join(opt.choices) + "]"
        elif base in (to_int.metavar, to_float.metavar):  # type: ignore[attr-defined]
            assert shown == base, f"{opt.cli_name} is a number: its help says {shown}"


def test_spot_checks() -> None:
    text = help_text("start")
    for expected in (
        "--port INTEGER",
        "--workers INTEGER",
        "--timeout-keep-alive FLOAT",
        "--max-worker-memory FLOAT",
        "--env-file PATH",
        "--ssl-certfile PATH",
        "--http [auto|h1c|httptools|h11]",
        "--log-level [critical|error|warning|info|debug|trace]",
        "--uds-mode OCTAL",
        "--metrics-bind HOST:PORT",
    ):
        assert expected in text, expected


@pytest.mark.parametrize("command", sorted(CONTROL_COMMANDS))
def test_control_commands_read_the_pid_file(command: str) -> None:
    text = " ".join(help_text(command).split())
    assert "--pid-file PATH Where to read the master's PID" in text
    start = " ".join(help_text("start").split())
    assert "Where to read the master's PID" not in start
    assert "--pid-file PATH " + " ".join(BY_NAME["pid_file"].help.split()) in start
