"""The ``asgictl`` command line, generated from the option table in ``config.py``.

Every option is declared to typer as an optional string (or switch) so that "not given"
is distinguishable from a default: :func:`asgictl.config.resolve` then applies the
precedence (command line > environment > file > default) and parses each value with the
option's own converter, so a bad value is reported in one line naming the option.
"""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, Optional

import typer

from asgictl import __version__
from asgictl.config import SERVE, START, ConfigError, Option, options_for, resolve

_SETTINGS: dict[str, Any] = {
    "name": "asgictl",
    "help": "asgictl: a production ASGI server and the process manager around it.",
    "add_completion": False,
    "no_args_is_help": True,
    "rich_markup_mode": None,
    "pretty_exceptions_enable": False,
    "context_settings": {"help_option_names": ["-h", "--help"], "max_content_width": 100},
}

#: name -> adds that command to a Typer app (see build)
_COMMANDS: dict[str, Callable[[typer.Typer], Any]] = {}


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"asgictl: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _help(opt: Option, command: str) -> str:
    extra = []
    if opt.default not in (None, "", [], False) and not opt.flag:
        extra.append(f"default: {opt.default}")
    extra.append("env: " + ", ".join(opt.env_names))
    return f"{opt.help_for(command)}  [{'; '.join(extra)}]"


def _parameter(opt: Option, command: str) -> inspect.Parameter:
    names = [opt.cli_name, *opt.aliases]
    if opt.flag:
        negative = "--no-" + opt.cli_name[2:]
        info = typer.Option(f"{opt.cli_name}/{negative}", help=_help(opt, command), show_default=False)
        annotation: Any = Annotated[Optional[bool], info]  # noqa: UP045 - typer needs Optional
    else:
        # Declared as text (so "not given" stays None); the help shows the real type.
        info = typer.Option(*names, help=_help(opt, command), metavar=opt.value_name, show_default=False)
        kind = Optional[list[str]] if opt.multiple else Optional[str]  # noqa: UP045
        annotation = Annotated[kind, info]
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _command(command: str, handler: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
    """A function whose signature declares the APP argument and every option of ``command``."""
    app_param = inspect.Parameter(
        "app",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Optional[str],  # noqa: UP045
            typer.Argument(help="The application, as module:attribute (e.g. main:app).", show_default=False),
        ],
    )
    params = [app_param, *(_parameter(opt, command) for opt in options_for(command))]

    def run_command(**values: Any) -> None:
        handler(values)

    run_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run_command.__annotations__ = {p.name: p.annotation for p in params}
    return run_command


def _exit_with(
    run: Callable[[], int], leave: Callable[[int | str | None], NoReturn] | None = None
) -> NoReturn:
    """Run a server command; bad configuration or an app that does not import is one
    line on stderr and a non-zero exit, never a traceback. ``leave``, when given, ends
    the process instead of SystemExit (the master: see ``exit_process``)."""
    from asgictl.worker.loader import AppLoadError

    try:
        try:
            code = run()
        except ConfigError as exc:
            fail(str(exc), 2)
        except AppLoadError as exc:
            fail(str(exc), 1)
        except ValueError as exc:  # e.g. a --log-config file that does not load
            if str(exc).startswith("--"):
                fail(str(exc), 2)
            raise
        raise SystemExit(code)
    except BaseException as exc:
        if leave is None:
            raise
        if not isinstance(exc, SystemExit):
            traceback.print_exc()
        leave(exc.code if isinstance(exc, SystemExit) else 1)


def _serve(values: dict[str, Any]) -> None:
    from asgictl.logs import configure_logging
    from asgictl.worker.server import Server

    def run() -> int:
        config = resolve(SERVE, values)
        configure_logging(config)
        return Server(config).run()

    _exit_with(run)


_COMMANDS[SERVE] = lambda cli: cli.command(
    SERVE,
    help="Serve APP in this process: one worker in the foreground, no master.",
    no_args_is_help=True,
)(_command(SERVE, _serve))


def _start(values: dict[str, Any]) -> None:
    from asgictl.logs import configure_logging
    from asgictl.supervisor import exit_process, run_master

    def run() -> int:
        config = resolve(START, values)
        if config.reload:  # dev mode: its own defaults, below what the user set anywhere
            from asgictl.supervisor.reload import DEV_DEFAULTS

            config = resolve(START, values, defaults=DEV_DEFAULTS)
        configure_logging(config)
        return run_master(config)

    _exit_with(run, leave=exit_process)


_COMMANDS[START] = lambda cli: cli.command(
    START,
    help="Start a master that binds the listeners and supervises --workers forked workers.",
    no_args_is_help=True,
)(_command(START, _start))


def _dev(values: dict[str, Any]) -> None:
    _start({**values, "reload": True if values.get("reload") is None else values["reload"]})


_COMMANDS["dev"] = lambda cli: cli.command(
    "dev",
    help="Develop APP: start --reload (watch files, roll workers onto new code; 3 s graceful deadline).",
    no_args_is_help=True,
)(_command(START, _dev))


# -- the control commands: talk to running masters over their control sockets

_JSON = inspect.Parameter(
    "json",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[bool, typer.Option("--json", help="Print the result as JSON.")],
)
_SELECTION_HELP = (
    "Which master: its app (main:app, or main) or its pid. Needed when several run;"
    " `asgictl status` lists them."
)
_MASTER = inspect.Parameter(
    "master",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional
        typer.Argument(metavar="[MASTER]", help=_SELECTION_HELP, show_default=False),
    ],
)


def _control_command(command: str, *extra: inspect.Parameter) -> Callable[..., None]:
    """A command taking ``extra`` parameters plus the table's options of ``command``."""
    params = [*extra, _JSON, *(_parameter(opt, command) for opt in options_for(command))]
    names = {p.name for p in extra} | {"json"}

    def run_command(**values: Any) -> None:
        from asgictl.control import commands

        options = {name: values.pop(name) for name in names}
        raise SystemExit(commands.main(command, values, **options))

    run_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run_command.__annotations__ = {p.name: p.annotation for p in params}
    return run_command


_SCALE = inspect.Parameter(
    "words",
    inspect.Parameter.KEYWORD_ONLY,
    annotation=Annotated[
        list[str],
        typer.Argument(
            metavar="[MASTER] N|+K|-K",
            help=f"Workers, or a change (+K, -K). {_SELECTION_HELP}",
            show_default=False,
        ),
    ],
)


_COMMANDS["status"] = lambda cli: cli.command(
    "status",
    help="Show a master and its workers (state, age, requests, connections, req/s, RSS, CPU%,"
    " restarts); with several masters running, one line each.",
)(
    _control_command(
        "status",
        _MASTER,
        inspect.Parameter(
            "watch",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option("--watch", "-w", help="Refresh every second, like top.")],
        ),
    )
)
_COMMANDS["reload"] = lambda cli: cli.command(
    "reload", help="Rolling restart of every worker; waits until it is done."
)(_control_command("reload", _MASTER))
_COMMANDS["scale"] = lambda cli: cli.command(
    "scale",
    help="Set the number of workers: N, +K or -K; waits until they are ready (or gone).",
    # "-1" is a count here, not an option.
    context_settings={"ignore_unknown_options": True},
)(_control_command("scale", _SCALE))
_COMMANDS["stop"] = lambda cli: cli.command(
    "stop", help="Stop the server (gracefully, or --fast) and wait until the master has exited."
)(
    _control_command(
        "stop",
        _MASTER,
        inspect.Parameter(
            "fast",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool, typer.Option("--fast", help="Do not wait for in-flight requests (like SIGQUIT).")
            ],
        ),
    )
)


def _version(value: bool) -> None:
    if value:
        import platform

        print(f"asgictl {__version__} with {platform.python_implementation()} {platform.python_version()}")
        raise typer.Exit()


def _main(
    version: Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """asgictl: a production ASGI server and the process manager around it."""


def build(only: str | None = None) -> typer.Typer:
    """The command line; with ``only``, a group holding just that command.

    typer turns every command of a group into click objects before it runs one, a few
    milliseconds for each of ours (each declares every option): ``main`` builds only
    the command being run, which is part of ``asgictl start``'s time to first answer.
    """
    cli = typer.Typer(**_SETTINGS)
    cli.callback()(_main)
    for name, add in _COMMANDS.items():
        if only is None or name == only:
            add(cli)
    return cli


app = build()


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else None
    (build(name) if name in _COMMANDS else app)()
