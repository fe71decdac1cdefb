"""Unit tests of dev mode's pieces that need no process: the change filter, the options,
the dev defaults' precedence, bytecode invalidation and the dev log filter."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from asgictl.config import START, ConfigError, resolve
from asgictl.logs import RESTATED, ROUTINE, marked
from asgictl.supervisor.reload import (
    DEV_DEFAULTS,
    ChangeFilter,
    DevLogFilter,
    _invalidate_bytecode,
    watched_dirs,
)
from asgictl.worker.lifespan import Lifespan


def test_default_globs_are_uvicorns(tmp_path: Path) -> None:
    f = ChangeFilter([str(tmp_path)])
    assert f.includes == ["*.py"]
    assert f.excludes == [".*", ".py[cod]", ".sw.*", "~*"]
    assert f.matches(str(tmp_path / "app.py"))
    assert f.matches(str(tmp_path / "pkg" / "views.py"))
    for name in ("notes.txt", ".hidden.py", "~backup.py", "app.pyc", "app.py~"):
        assert not f.matches(str(tmp_path / name)), name
    for folder in ("__pycache__", ".git", ".venv", "node_modules", ".hidden"):
        assert not f.matches(str(tmp_path / folder / "mod.py")), folder


def test_user_globs_add_to_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    f = ChangeFilter(
        [str(tmp_path)], includes=["*.html", "conf/*.toml"], excludes=["skip_*.py", str(tmp_path / "build")]
    )
    assert f.matches(str(tmp_path / "templates" / "page.html"))
    assert f.matches(str(tmp_path / "conf" / "app.toml"))
    assert not f.matches(str(tmp_path / "other" / "app.toml"))
    assert not f.matches(str(tmp_path / "skip_me.py"))
    assert not f.matches(str(tmp_path / "build" / "gen.py"))  # an excluded directory
    assert f.matches(str(tmp_path / "app.py"))


def test_an_include_lifts_the_same_default_exclude(tmp_path: Path) -> None:
    f = ChangeFilter([str(tmp_path)], includes=[".*"])
    assert ".*" not in f.excludes
    assert f.matches(str(tmp_path / ".env"))


def test_an_explicit_include_wins_over_the_default_excludes(tmp_path: Path) -> None:
    f = ChangeFilter([str(tmp_path)], includes=[".env", "*.toml"])
    assert ".*" in f.excludes  # still excluded for everything else
    assert f.matches(str(tmp_path / ".env"))
    assert f.matches(str(tmp_path / "conf" / ".env"))
    assert f.matches(str(tmp_path / ".config" / "app.toml"))  # a default-excluded folder
    assert not f.matches(str(tmp_path / ".other"))
    assert not f.matches(str(tmp_path / ".hidden.py"))  # *.py is a default include only
    assert not f.matches(str(tmp_path / ".git" / "app.toml"))  # VCS and cache folders: never


def test_the_users_own_exclude_still_wins_over_their_include(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    f = ChangeFilter([str(tmp_path)], includes=[".env*"], excludes=[".env.local", str(tmp_path / "secrets")])
    assert f.matches(str(tmp_path / ".env"))
    assert f.matches(str(tmp_path / ".env.prod"))
    assert not f.matches(str(tmp_path / ".env.local"))
    assert not f.matches(str(tmp_path / "secrets" / ".env"))


def test_folders_above_the_watched_directory_do_not_count(tmp_path: Path) -> None:
    root = tmp_path / ".hidden-parent" / "project"
    f = ChangeFilter([str(root)])
    assert f.matches(str(root / "app.py"))


def test_options_parse_and_dev_defaults_rank_below_every_source(tmp_path: Path) -> None:
    cli = {
        "app": "app:app",
        "reload": True,
        "reload_dirs": [str(tmp_path)],
        "reload_includes": ["*.html"],
        "reload_excludes": ["skip_*"],
        "reload_delay": "0.5",
    }
    config = resolve(START, cli, environ={}, cwd=str(tmp_path), defaults=DEV_DEFAULTS)
    assert config.reload and config.reload_dirs == [str(tmp_path)]
    assert config.reload_includes == ["*.html"] and config.reload_excludes == ["skip_*"]
    assert config.reload_delay == 0.5
    assert config.timeout_graceful_shutdown == 3.0
    env = {"ASGICTL_TIMEOUT_GRACEFUL_SHUTDOWN": "7"}
    config = resolve(START, cli, environ=env, cwd=str(tmp_path), defaults=DEV_DEFAULTS)
    assert config.timeout_graceful_shutdown == 7.0
    config = resolve(START, {"app": "app:app"}, environ={}, cwd=str(tmp_path))
    assert not config.reload and config.reload_delay == 0.25 and config.timeout_graceful_shutdown == 30.0
    config = resolve(START, {"app": "app:app"}, environ={"ASGICTL_RELOAD_DIRS": "a,b"}, cwd=str(tmp_path))
    assert config.reload_dirs == ["a", "b"]


def test_reload_with_preload_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--reload"):
        resolve(START, {"app": "a:b", "reload": True, "preload": True}, environ={}, cwd=str(tmp_path))


def test_a_missing_reload_dir_is_one_line_error(tmp_path: Path) -> None:
    config = resolve(
        START, {"app": "a:b", "reload_dirs": [str(tmp_path / "nope")]}, environ={}, cwd=str(tmp_path)
    )
    with pytest.raises(ConfigError, match="--reload-dir"):
        watched_dirs(config)


def test_nested_reload_dirs_are_watched_once(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    config = resolve(
        START,
        {"app": "a:b", "reload_dirs": [str(tmp_path / "sub"), str(tmp_path)]},
        environ={},
        cwd=str(tmp_path),
    )
    assert watched_dirs(config) == [str(tmp_path)]


def test_changed_modules_lose_their_cached_bytecode(tmp_path: Path) -> None:
    source = tmp_path / "mod_for_pyc.py"
    source.write_text("x = 1\n")
    cached = Path(importlib.util.cache_from_source(str(source)))
    cached.parent.mkdir()
    cached.write_bytes(b"stale")
    _invalidate_bytecode([str(source), str(tmp_path / "notes.txt")])
    assert not cached.exists()


def test_dev_log_filter_drops_routine_lines_and_trims_tracebacks() -> None:
    f = DevLogFilter()
    logger = logging.getLogger("asgictl.error")

    def record(
        msg: str, level: int = logging.INFO, exc_info: object = None, mark: Mapping[str, str] | None = None
    ) -> logging.LogRecord:
        return logger.makeRecord(logger.name, level, __file__, 1, msg, (1,), exc_info, extra=mark)  # type: ignore[arg-type]

    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        # The mark decides, never the wording.
        assert not f.filter(record("Started server process [%d]", mark=ROUTINE))
        assert f.filter(record("Started server process [%d]"))
        assert f.filter(record("Reloaded in 0.1 s: app.py changed"))
        assert f.filter(record("%s failed to boot: %s", logging.ERROR))
        assert f.filter(record("A routine line that warns", logging.WARNING, mark=ROUTINE))
        assert not f.filter(record("Reload aborted", logging.ERROR, mark=RESTATED))
        logger.setLevel(logging.DEBUG)
        assert f.filter(record("Started server process [%d]", mark=ROUTINE))
        assert f.filter(record("Reload aborted", logging.ERROR, mark=RESTATED))
    finally:
        logger.setLevel(old)

    def user_code() -> None:
        raise RuntimeError("boom")

    # The exception is caught in a frame "of asgictl" (compiled under its file name), so
    # its traceback starts with machinery, then reaches the user's code.
    machinery_source = (
        "def machinery(fn):\n    try:\n        fn()\n    except Exception:\n        return sys.exc_info()\n"
    )
    namespace: dict[str, object] = {"sys": sys}
    spec = importlib.util.find_spec("asgictl")
    assert spec is not None and spec.origin is not None
    exec(compile(machinery_source, spec.origin, "exec"), namespace)
    exc_info = namespace["machinery"](user_code)  # type: ignore[operator]
    rec = record("Could not start the application", logging.ERROR, exc_info)
    assert f.filter(rec)
    tb = rec.exc_info[2]  # type: ignore[index]
    assert tb is not None and tb.tb_frame.f_code.co_name == "user_code"


def test_the_apps_lifecycle_lines_carry_the_routine_mark(error_log: list[logging.LogRecord]) -> None:
    async def app(scope: dict, receive: object, send: object) -> None:
        while True:
            message = await receive()  # type: ignore[operator]
            await send({"type": message["type"] + ".complete"})  # type: ignore[operator]
            if message["type"] == "lifespan.shutdown":
                return

    async def run() -> None:
        lifespan = Lifespan(app, "on", {})
        assert await lifespan.startup()
        await lifespan.shutdown()

    asyncio.run(run())
    captured = error_log
    assert not any(DevLogFilter().filter(r) for r in captured)  # at INFO: all dropped
    assert [r.getMessage() for r in captured] == [
        "Waiting for application startup.",
        "Application startup complete.",
        "Waiting for application shutdown.",
        "Application shutdown complete.",
    ]
    assert all(marked(r, ROUTINE) for r in captured)
